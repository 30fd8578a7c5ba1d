#!/usr/bin/env bash
# The demo: what Tern does today, end to end, on this machine: a signed app
# package; a device (ternd with real runc) that installs it, updates it, rolls a
# broken release back by itself, and rolls back to N-1 on request.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath "${1:-out}")
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
	echo "demo: run as root (ternd runs containers with runc)" >&2
	exit 1
fi

step "verify the signed example package against the development key"
./bin/tern app verify "$out/hello-1.0.0.tern" --pubkey "$out/dev.pub"
./bin/tern app inspect "$out/hello-1.0.0.tern" --pubkey "$out/dev.pub"

step "a tampered package is refused"
cp "$out/hello-1.0.0.tern" "$out/hello-tampered.tern"
size=$(stat -c %s "$out/hello-tampered.tern")
printf '\x01' | dd of="$out/hello-tampered.tern" bs=1 seek=$((size / 2)) conv=notrunc status=none
if ./bin/tern app verify "$out/hello-tampered.tern" --pubkey "$out/dev.pub"; then
	echo "demo: a tampered package verified" >&2
	exit 1
fi

step "start a device: ternd trusting the development key"
dev=$(mktemp -d /tmp/tern-demo-XXXX)
mkdir -p "$dev/trust"
cp "$out/dev.pub" "$dev/trust/"
./bin/ternd --data "$dev/data" --socket "$dev/ternd.sock" --trust "$dev/trust" \
	--runtime-root "$dev/runc" --cgroup-parent /tern-demo >"$dev/ternd.log" 2>&1 &
ternd_pid=$!
cleanup() {
	./bin/tern device --device "unix://$dev/ternd.sock" remove hello >/dev/null 2>&1 || true
	kill "$ternd_pid" 2>/dev/null || true
	wait "$ternd_pid" 2>/dev/null || true
	echo "(device state and ternd's log are in $dev)"
}
trap cleanup EXIT
device() { ./bin/tern device --device "unix://$dev/ternd.sock" "$@"; }
for _ in $(seq 100); do [[ -S $dev/ternd.sock ]] && break; sleep 0.1; done

# hello listens only inside its own network namespace (network: none); the demo
# asks it from there, as ternd's health check does.
ask() {
	local pid
	for _ in $(seq 100); do
		pid=$(device ps --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -1)
		[[ -n $pid ]] && nsenter --net="/proc/$pid/ns/net" busybox wget -qO- http://127.0.0.1:8080/ 2>/dev/null && return
		sleep 0.1
	done
	echo "hello does not answer" >&2
	return 1
}

step "install hello 1.0.0"
device install "$out/hello-1.0.0.tern"
device ps
printf 'hello says: '; ask

step "update to 1.1.0: installed beside 1.0.0, swapped, watched through probation, committed"
device install "$out/hello-1.1.0.tern"
device ps
printf 'hello says: '; ask

step "update to 1.2.0, a broken release: it fails probation and rolls back by itself"
if device install "$out/hello-1.2.0.tern"; then
	echo "demo: the broken release was committed" >&2
	exit 1
fi
device ps
printf 'hello says: '; ask

step "roll back to the previous version on request"
device rollback hello
device ps
printf 'hello says: '; ask

step "what happened, as the device recorded it"
device events
