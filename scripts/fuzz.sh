#!/usr/bin/env bash
# Runs every fuzz target of the module in turn (go test runs one -fuzz target at
# a time).
#
# Budgets are execution counts ("Nx"), not durations: with a duration, Go 1.26's
# fuzz coordinator can report a spurious "context deadline exceeded" failure when
# its deadline races a worker on a loaded machine (go.dev/issue/75804, fixed in
# Go 1.27). A count has no deadline to race. The counts below are about ten
# seconds of work for each target on the 2-core CI machine; FUZZEXECS overrides
# them all (e.g. FUZZEXECS=2000000x for a long run). A real crasher still fails
# the run and is written to testdata/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
budget() {
	if [[ -n "${FUZZEXECS:-}" ]]; then echo "$FUZZEXECS"; return; fi
	case "$1" in
	FuzzUnpack) echo 15000x ;;          # ~1.5k execs/s: writes real files
	FuzzReadPackage) echo 100000x ;;    # verifies signatures and digests
	FuzzReadFrame | FuzzParseAmount | FuzzPlanCampaign) echo 100000x ;; # ~10k execs/s
	*) echo 150000x ;;                  # pure parsers: 15k-40k execs/s
	esac
}
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		n=$(budget "$target")
		echo "fuzz: $pkg $target ($n)"
		go test -run='^$' -fuzz="^${target}\$" -fuzztime="$n" -timeout=10m "$pkg"
	done
done
