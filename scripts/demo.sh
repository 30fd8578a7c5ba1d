#!/usr/bin/env bash
# The demo: what Tern does today, end to end. It grows with each capability.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
step() { printf '\n== %s\n' "$*"; }

step "verify the signed example package against the development key"
./bin/tern app verify "$out/hello-1.0.0.tern" --pubkey "$out/dev.pub"

step "inspect it"
./bin/tern app inspect "$out/hello-1.0.0.tern" --pubkey "$out/dev.pub"

step "a second release key co-signs it; verify with a threshold of 2"
[[ -f $out/ops.key ]] || ./bin/tern keys generate --out "$out/ops"
cp "$out/hello-1.0.0.tern" "$out/hello-cosigned.tern"
./bin/tern app sign "$out/hello-cosigned.tern" --key "$out/ops.key"
./bin/tern app verify "$out/hello-cosigned.tern" --pubkey "$out/dev.pub" --pubkey "$out/ops.pub" --threshold 2

step "a tampered package is refused"
cp "$out/hello-1.0.0.tern" "$out/hello-tampered.tern"
size=$(stat -c %s "$out/hello-tampered.tern")
printf '\x01' | dd of="$out/hello-tampered.tern" bs=1 seek=$((size / 2)) conv=notrunc status=none
if ./bin/tern app verify "$out/hello-tampered.tern" --pubkey "$out/dev.pub"; then
	echo "demo: a tampered package verified" >&2
	exit 1
fi
echo "(refused, as it should be)"
