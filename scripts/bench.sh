#!/usr/bin/env bash
# Device benchmarks: ternd beside runc, containerd (ctr), podman and a plain process
# on the example app, ternd's footprint and binary size, install throughput, layer
# sharing and update downloads. Prints a table; the raw `go test` output is kept in
# out/bench/. Needs root (containers, cgroups, mounts).
#
#   scripts/bench.sh          the quick set (make bench), under 5 minutes; ends with
#                             the fleet simulator at 200 devices (-quick)
#   scripts/bench.sh full     the full set recorded in docs/BENCHMARKS.md (~6 minutes):
#                             more iterations, the existing device benchmarks, the
#                             256 MiB OS install, and the fleet simulator at 1,000
#   scripts/bench.sh table F  prints the table of an earlier run's raw output F
#
# The peers come from Debian and are installed here, not by make setup, so that
# `make test` does not pay for them: runc, containerd (ctr, containerd-shim-runc-v2),
# podman (conmon) and hyperfine. containerd and podman run privately under a scratch
# directory (see bench/peers): nothing is configured system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
mode=${1:-quick}
case $mode in quick | full | table) ;; *)
	echo "usage: $0 [quick|full|table FILE]" >&2
	exit 2
	;;
esac
if [[ $mode == table ]]; then
	raw=${2:?usage: $0 table FILE}
elif [[ $(id -u) -ne 0 ]]; then
	echo "bench: must run as root (containers, cgroups, mounts)" >&2
	exit 1
fi

if [[ $mode != table ]]; then
	pkgs=(runc containerd podman conmon hyperfine busybox-static zstd)
	missing=()
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if ((${#missing[@]})); then
		echo "bench: installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi

	mkdir -p out/bench
	raw=out/bench/$(date -u +%Y%m%dT%H%M%SZ)-$mode.txt
	# gotest PATTERN BENCHTIME: one `go test` run of the device benchmarks.
	# The load average goes into the output: the machine may be shared, and a busy
	# one slows every contender (the interleaved runs keep the ratios fair).
	gotest() {
		echo "bench: go test -run='^\$' -bench='$1' -benchtime=$2 ./bench/device/ (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
		echo "# load average before '$1': $(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw"
		go test -v -count=1 -timeout=60m -run='^$' -bench="$1" -benchtime="$2" ./bench/device/ 2>&1 | tee -a "$raw" |
			grep -E '^(Benchmark|--- FAIL|FAIL|panic|ok )|_test.go:' | grep -v '^Benchmark[^ ]*$' >&2 || true
	}
	{
		echo "# $(date -u) $mode on $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
		echo "# $(go version); $(runc --version | head -1); $(containerd --version | cut -d' ' -f3); podman $(podman --version | cut -d' ' -f3); conmon $(conmon --version | head -1 | cut -d' ' -f3)"
	} >"$raw"
	start=$SECONDS
	# fleetsim ARGS: the fleet simulator against a real tern server (docs/fleetsim.md);
	# its table goes beside the raw output and is printed after the device table.
	fleetsim() {
		echo "bench: fleetsim $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
		if ! go run ./bench/fleetsim/cmd/fleetsim "$@" >"$fleet" 2>"${fleet%.txt}.log"; then
			echo "bench: fleetsim failed (see ${fleet%.txt}.log)" >&2
			status=1
		fi
	}
	fleet=${raw%.txt}-fleetsim.txt
	if [[ $mode == quick ]]; then
		gotest 'Peers' 10x
		gotest 'Footprint|TerndSize' 1x
		gotest 'InstallThroughput|DiskSharedLayers|UpdateOneLayer' 3x
		fleetsim -n 200 -quick
	else
		gotest 'Peers' 30x
		gotest 'Footprint|TerndSize' 1x
		gotest 'InstallThroughput|DiskSharedLayers|UpdateOneLayer' 10x
		gotest 'AppStartThroughTernd|InstallToRunning|UpdateCommitAndGap' 5x
		gotest 'OSInstall256MB' 3x
		fleetsim -n 1000
	fi
	echo "bench: $((SECONDS - start)) s; raw output in $raw" >&2
	if grep -qE '^(--- FAIL|FAIL)' "$raw"; then
		echo "bench: some benchmarks failed (see $raw)" >&2
		status=1
	fi
fi

# The table: each benchmark's reported metrics, picked by name.
awk '
/^Benchmark[^ ]*-[0-9]+[ \t]/ {
	name = $1; sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i += 2) m[name "|" $(i+1)] = $i
}
function v(key) { return (key in m) ? sprintf("%.1f", m[key]) : "-" }
function ms(key) { return (key in m) ? sprintf("%.1f", m[key] / 1e6) : "-" }
function v2(key) { return (key in m) ? sprintf("%.2f", m[key]) : "-" }
function row(label, a, b, c, d, e,   line) {
	line = sprintf("%-46s %9s %9s %9s %9s %9s", label, a, b, c, d, e)
	sub(/ +$/, "", line)
	print line
}
END {
	s = "BenchmarkPeers/StartToAnswer|"
	print ""
	row("App start (example app), ms, median", "ternd", "runc", "ctr", "podman", "process")
	row("  command to first answer on its port", v(s "ms-answer-ternd"), v(s "ms-answer-runc"), v(s "ms-answer-ctr"), v(s "ms-answer-podman"), v(s "ms-answer-plain"))
	row("  command to its return", v(s "ms-returned-ternd"), v(s "ms-returned-runc"), v(s "ms-returned-ctr"), v(s "ms-returned-podman"), v(s "ms-returned-plain"))
	row("  answer, x ternd", "1.00", v2(s "x-ternd-runc"), v2(s "x-ternd-ctr"), v2(s "x-ternd-podman"), v2(s "x-ternd-plain"))
	s = "BenchmarkPeers/RunToExit|"
	row("  run of busybox true to exit (hyperfine)", "", v(s "ms-run-to-exit-runc"), v(s "ms-run-to-exit-ctr"), v(s "ms-run-to-exit-podman"), v(s "ms-run-to-exit-process"))
	row("  anchors (published)", "", "52", "201", "331", "")
	s = "BenchmarkPeers/MonitorMemory|"
	print ""
	row("Per-app monitor, MiB", "ternd", "", "ctr", "podman", "")
	row("  VmRSS, 1 app", v2(s "MiB-monitor-rss-ternd-1"), "", v2(s "MiB-monitor-rss-ctr-1"), v2(s "MiB-monitor-rss-podman-1"), "")
	row("  VmRSS, 10 apps (mean)", v2(s "MiB-monitor-rss-ternd-10"), "", v2(s "MiB-monitor-rss-ctr-10"), v2(s "MiB-monitor-rss-podman-10"), "")
	row("  Pss, 1 app", v2(s "MiB-monitor-pss-ternd-1"), "", v2(s "MiB-monitor-pss-ctr-1"), v2(s "MiB-monitor-pss-podman-1"), "")
	row("  Pss, 10 apps (mean)", v2(s "MiB-monitor-pss-ternd-10"), "", v2(s "MiB-monitor-pss-ctr-10"), v2(s "MiB-monitor-pss-podman-10"), "")
	row("  daemon Pss with 10 apps (ternd, containerd)", v(s "MiB-daemon-pss-ternd-10"), "", v(s "MiB-daemon-pss-ctr-10"), "none", "")
	row("  anchors (published VmRSS)", "", "", "12.8", "1.9", "")
	s = "BenchmarkFootprint|"
	print ""
	row("ternd footprint", "0 apps", "3 apps", "10 apps", "", "")
	row("  RSS, MiB (target < 12; Greengrass 96 MB)", v(s "MiB-ternd-rss-0-apps"), v(s "MiB-ternd-rss-3-apps"), v(s "MiB-ternd-rss-10-apps"), "", "")
	row("  of which anonymous (the rest is the binary)", v(s "MiB-ternd-anon-0-apps"), v(s "MiB-ternd-anon-3-apps"), v(s "MiB-ternd-anon-10-apps"), "", "")
	row("  CPU idle, % of a core", v2(s "pct-ternd-cpu-0-apps"), v2(s "pct-ternd-cpu-3-apps"), v2(s "pct-ternd-cpu-10-apps"), "", "")
	row("  binary, MB (target < 10; Mender client 10)", v2("BenchmarkTerndSize|MB-ternd"), "no HTTP/2:", v2("BenchmarkTerndSize|MB-ternd-nethttpomithttp2"), "", "")
	s = "BenchmarkInstallThroughput|"
	print ""
	row("Install vs copy of the package", "pkg MB", "install", "cp+sync", "x cp", "tar+zstd")
	row("  example app, ms", v(s "MB-pkg-example"), v(s "ms-install-example"), v(s "ms-cp-sync-example"), v(s "x-cp-example"), v(s "ms-tar-zstd-sync-example"))
	row("  64 MiB app, ms", v(s "MB-pkg-64MiB"), v(s "ms-install-64MiB"), v(s "ms-cp-sync-64MiB"), v(s "x-cp-64MiB"), v(s "ms-tar-zstd-sync-64MiB"))
	print ""
	row("Disk, 10 apps on a 24 MiB base, MiB", "shared", "unshared", "", "", "")
	row("  data directory (du -sx)", v("BenchmarkDiskSharedLayers|MiB-10-apps-shared"), v("BenchmarkDiskSharedLayers|MiB-10-apps-unshared"), "", "", "")
	s = "BenchmarkUpdateOneLayer|"
	print ""
	row("Update where only the top layer differs, MB", "package", "download", "layer", "% pkg", "")
	row("  bytes the device fetched (managed update)", v2(s "MB-package"), v2(s "MB-downloaded"), v2(s "MB-changed-layer"), v(s "pct-of-package"), "")
	if (("BenchmarkAppStartThroughTernd|ns/op") in m) {
		print ""
		row("ternd in process (the agent), ms", "start", "install", "commit+", "gap", "")
		row("  example app; update: beyond probation, gap", ms("BenchmarkAppStartThroughTernd|ns/op"), ms("BenchmarkInstallToRunning|ns/op"),
			v("BenchmarkUpdateCommitAndGap|ms-commit-beyond-probation"), v("BenchmarkUpdateCommitAndGap|ms-service-gap"), "")
	}
	s = "BenchmarkOSInstall256MB|"
	if ((s "ms-install-local") in m) {
		print ""
		row("OS image 256 MiB into a slot, ms", "install", "download", "ratio", "peak RSS", "")
		row("  at 100 Mbit/s", v(s "ms-install-100Mbit"), v(s "ms-download-100Mbit"), v2(s "ratio-100Mbit"), v(s "MiB-ternd-peak-rss"), "")
		row("  local", v(s "ms-install-local"), v(s "ms-copy-local"), "", "", "")
	}
}' "$raw"
fleet=${raw%.txt}-fleetsim.txt
if [[ -s $fleet ]]; then
	echo
	echo "Management server under simulated devices (bench/fleetsim; docs/fleetsim.md)"
	cat "$fleet"
fi
exit "${status:-0}"
