#!/usr/bin/env bash
# Builds the example app (a static Go binary), makes a development release key if
# there is none yet, and builds and signs hello's package. Usage: examples.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
mkdir -p "$out/hello/rootfs"
[[ -f $out/dev.key ]] || ./bin/tern keys generate --out "$out/dev"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w -X main.version=1.0.0' -o "$out/hello/rootfs/hello" ./examples/hello
./bin/tern app build --from "rootfs:$out/hello/rootfs" --manifest examples/hello/tern.yaml \
	--key "$out/dev.key" -o "$out/hello-1.0.0.tern"
