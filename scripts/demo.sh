#!/usr/bin/env bash
# The demo, end to end on this machine: a management server on embedded defaults
# (SQLite, embedded MQTT broker), one device (ternd with real runc) that enrolls
# with a token, and the example app rolled out by campaigns: deployed, updated,
# rolled back by the operator, then a broken release that the device rolls back by
# itself while its campaign pauses.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath "${1:-out}")
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
	echo "demo: run as root (ternd runs containers with runc)" >&2
	exit 1
fi

work=$(mktemp -d /tmp/tern-demo-XXXX)
export HOME=$work/home # tern fleet login keeps its config here, not in yours
mkdir -p "$HOME" "$work/device"
free_port() { for p in $(seq "$1" "$(($1 + 200))"); do ss -ltn | grep -q ":$p " || { echo "$p"; return; }; done; }
http=$(free_port 18443)
mqtt=$(free_port 18883)
server_url=https://127.0.0.1:$http
tern() { ./bin/tern "$@"; }
device() { ./bin/tern device --device "unix://$work/device/ternd.sock" "$@"; }

pids=()
cleanup() {
	device remove hello >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "(logs and state are in $work)"
}
trap cleanup EXIT

bold "start the management server: tern server (SQLite, embedded MQTT broker)"
./bin/tern server --data "$work/server" --http "127.0.0.1:$http" --mqtt "127.0.0.1:$mqtt" >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/server/admin.token ]] && break; sleep 0.1; done
tern fleet login "$server_url" --key "$(cat "$work/server/admin.token")" 2>/dev/null
tern fleet release-keys add "$out/dev.pub"

bold "enroll a device: ternd with a one-time token that pins the server's CA"
token=$(tern fleet tokens create --label site=demo 2>/dev/null)
./bin/ternd --data "$work/device/data" --socket "$work/device/ternd.sock" --trust "$work/device/trust" \
	--runtime-root "$work/device/runc" --cgroup-parent /tern-demo \
	--server "$server_url" --enroll-token "$token" >"$work/device/ternd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do tern fleet devices ls --status online 2>/dev/null | grep -q site=demo && break; sleep 0.2; done
tern fleet devices ls

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
campaign() { # NAME RELEASE: roll RELEASE out to the demo site and follow it
	tern fleet campaign create "$1" --release "$2" --selector site=demo >/dev/null
	tern fleet campaign show "$1" --watch | tail -2 || true # --watch exits non-zero for a paused campaign
}

bold "release v1 (hello 1.0.0), rolled out by a campaign"
tern fleet release create v1 "$out/hello-1.0.0.tern"
campaign roll-v1 v1
device ps
printf 'hello says: '; ask

bold "release v2 (hello 1.1.0): the device downloads only what it lacks, swaps, and commits after probation"
tern fleet release create v2 "$out/hello-1.1.0.tern" >/dev/null
campaign roll-v2 v2
device ps
printf 'hello says: '; ask

bold "the operator rolls campaign roll-v2 back: the device returns to its previous release"
tern fleet campaign rollback roll-v2
for _ in $(seq 600); do
	json=$(device ps --json)
	grep -q '"version": "1.0.0"' <<<"$json" && ! grep -q '"update"' <<<"$json" && break
	sleep 0.1
done
device ps
printf 'hello says: '; ask

bold "release v3 (hello 1.2.0) is broken: the device rolls it back by itself, the campaign pauses"
tern fleet release create v3 "$out/hello-1.2.0.tern" >/dev/null
campaign roll-v3 v3
device ps
printf 'hello says: '; ask

bold "what the device recorded, and what the server knows"
device events | tail -12
tern fleet devices show "$(tern fleet devices ls -q demo | awk 'NR==2 {print $1}')"
