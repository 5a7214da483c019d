#!/usr/bin/env bash
# Builds uvs and runs `uvs demo`: a namespace DR lab (client → router → LAN with the director
# and two real servers), requests from the client, and the annotated packet flow.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release --bin uvs
exec ./target/release/uvs demo
