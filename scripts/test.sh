#!/usr/bin/env bash
# The whole test suite: unit and integration tests (real runc, real files), then
# every fuzz target briefly. Tests need root; under CI=true a missing prerequisite
# fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

if [[ $(id -u) -ne 0 ]]; then
	if [[ ${CI:-} == true ]]; then
		echo "test: must run as root (runc, mounts, cgroups)" >&2
		exit 1
	fi
	echo "test: not root: tests that need runc will skip" >&2
fi

go vet ./...
go test -count=1 -timeout 30m ./...
bash scripts/fuzz.sh
