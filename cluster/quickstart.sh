#!/usr/bin/env bash
# The README's first command: set up this node, build, and run the quickstart.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source cluster/env.sh
bash cluster/setup-node.sh
cargo build --release --workspace
echo "== micn doctor under mpirun -np 2 (checks every collective across the ranks)"
target/release/micn-launch --np 2 -- doctor --check-comm
