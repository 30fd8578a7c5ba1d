#!/usr/bin/env bash
# Installs what Tern needs on Debian and fetches Go modules. Idempotent: apt runs
# only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# runc runs containers; busybox-static, umoci, skopeo and zstd make test images;
# iproute2 builds test networks; postgresql and mosquitto are the server's
# production backends, started by the tests themselves; libubootenv-tool,
# u-boot-tools and grub-common are the bootloader tools of OS updates.
pkgs=(runc busybox-static umoci skopeo zstd iproute2 ca-certificates util-linux
	postgresql mosquitto mosquitto-clients libubootenv-tool u-boot-tools grub-common)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "setup: missing Debian packages: ${missing[*]}; run make setup as root" >&2
		exit 1
	fi
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v go >/dev/null; then
	export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || { echo "setup: Go is not installed (want /usr/local/go)" >&2; exit 1; }
go mod download
