#!/usr/bin/env bash
# Builds the example app (a static Go binary), makes a development release key if
# there is none yet, and builds and signs hello's packages:
#   hello-1.0.0.tern  the example as shipped
#   hello-1.1.0.tern  a newer greeting
#   hello-1.2.0.tern  a broken release: it crashes during probation
# Usage: examples.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
mkdir -p "$out/hello/rootfs/bin"
[[ -f $out/dev.key ]] || ./bin/tern keys generate --out "$out/dev"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w -X main.version=1.0.0' -o "$out/hello/rootfs/hello" ./examples/hello
./bin/tern app build --from "rootfs:$out/hello/rootfs" --manifest examples/hello/tern.yaml \
	--key "$out/dev.key" -o "$out/hello-1.0.0.tern"

# The later releases: the same image, other manifests (a real app would rebuild).
sed -e 's/^version: .*/version: 1.1.0/' -e 's/GREETING: hi/GREETING: hello again/' examples/hello/tern.yaml >"$out/hello/tern-1.1.0.yaml"
./bin/tern app build --from "rootfs:$out/hello/rootfs" --manifest "$out/hello/tern-1.1.0.yaml" \
	--key "$out/dev.key" -o "$out/hello-1.1.0.tern"
sed -e 's/^version: .*/version: 1.2.0/' -e 's|^command: .*|command: ["/hello", "--listen", ":99999"]|' \
	examples/hello/tern.yaml >"$out/hello/tern-1.2.0.yaml"
./bin/tern app build --from "rootfs:$out/hello/rootfs" --manifest "$out/hello/tern-1.2.0.yaml" \
	--key "$out/dev.key" -o "$out/hello-1.2.0.tern"
