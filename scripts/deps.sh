#!/usr/bin/env bash
# Installs the Debian packages uvs's demo and tests use, if any is missing.
# Package services are not started: uvs's labs run their own servers inside namespaces.
set -euo pipefail
# The package checks (scripts/test-package.sh, netns-tests/packaging.rs) add binutils (strip,
# readelf), systemd (systemd-analyze, systemctl --root), man-db and strace.
need=(iproute2 nftables nginx-light curl tcpdump ethtool python3 procps socat util-linux keepalived netsniff-ng linux-perf python3-matplotlib binutils systemd man-db strace bird2 frr "$@")
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [ "$(id -u)" != 0 ]; then
  echo "deps.sh: missing packages ${missing[*]}; run as root to install them" >&2
  exit 1
fi
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  # Keep apt from starting nginx in the host namespace.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  guard=1
fi
trap '[ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
