#!/usr/bin/env bash
# The README's second command: set up this node, build, and run the whole test suite.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source cluster/env.sh
bash cluster/setup-node.sh
cargo build --release --workspace
cargo test --release --workspace
