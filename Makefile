# Tern's entry points. `make demo` and `make test` work alone on a fresh machine:
# each runs `make setup` first.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
OUT := $(CURDIR)/out
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: setup build examples demo test test-unit fuzz bench clean

# setup installs what the project needs from Debian (idempotent: apt only runs when
# something is missing) and fetches the Go modules.
setup:
	@bash scripts/setup.sh

# ternd is built without net/http's HTTP/2 (it speaks HTTP/1.1 only): 0.55 MB less
# on the device, under the 10 MB budget.
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/ ./cmd/tern ./cmd/tern-monitor
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -tags nethttpomithttp2 -o $(BIN)/ ./cmd/ternd

# examples builds the example app and signs its package with a development key made
# on the spot (out/dev.key), the way an app developer starts.
examples: build
	@bash scripts/examples.sh $(OUT)

demo: setup examples
	@bash scripts/demo.sh $(OUT)

# test runs the whole suite, fuzz targets briefly included. Tests need root (runc).
test: setup
	@bash scripts/test.sh

fuzz:
	@FUZZEXECS=2000000x bash scripts/fuzz.sh

# bench runs the quick set of device benchmarks (ternd beside runc, ctr, podman and
# a plain process; footprint, install, layers) and prints a table; it installs the
# peers it measures against from Debian itself. BENCH=full runs the set recorded in
# docs/BENCHMARKS.md.
bench: setup
	@bash scripts/bench.sh $(or $(BENCH),quick)

clean:
	rm -rf $(BIN) $(OUT)
