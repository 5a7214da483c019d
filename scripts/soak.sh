#!/usr/bin/env bash
# Soak test: mixed traffic through a namespace DR lab while the configuration changes every
# second over the admin socket (weight flaps 0<->1 standing in for health checks, scheduler
# changes, a service added and removed, timeouts). Fails if the uvs process's RSS grows by
# more than 8 MB after warm-up, if it leaks a descriptor, if an established connection is
# lost or any request goes unanswered. Needs root.
#
#   scripts/soak.sh [MINUTES]      default 30
#
# The same test, for about two minutes, is part of the netns suite (netns-tests/soak.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
case "$minutes" in ''|*[!0-9]*) echo "usage: $0 [MINUTES]" >&2; exit 2 ;; esac
export UVS_SOAK_SECS=$((minutes * 60))
export CI="${CI:-true}"   # fail rather than skip when namespaces are unavailable
echo "soak: ${minutes} min of traffic (RSS and descriptors sampled every 10 s)"
exec cargo test --test netns soak_mixed_traffic -- --nocapture --test-threads=1
