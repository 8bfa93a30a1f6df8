#!/usr/bin/env bash
# Debian packages peerload's tests need: redis-server (Redis store tests), libibverbs1
# (Mooncake's TransferEngine links it even for tcp) and nftables (`nft`: packet loss and
# partitions between emulated hosts) and chromium (the status page's test drives a real headless
# browser). Installs only what is missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ldconfig -p 2>/dev/null | grep -q 'libibverbs.so.1' || missing+=(libibverbs1)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
