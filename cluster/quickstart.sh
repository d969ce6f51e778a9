#!/usr/bin/env bash
# The README's first command: set up this node, build, then the quickstart:
# synthetic Amazon-like data → prepare → DIN + MICN on 2 MPI ranks → test AUC beside the oracle's.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source cluster/env.sh
bash cluster/setup-node.sh
cargo build --release --workspace
micn=target/release/micn

echo "== micn doctor on 2 ranks (checks every collective across them)"
target/release/micn-launch --np 2 -- doctor --check-comm

# (Re)made when missing or unreadable, e.g. prepared by an older micn.
if ! $micn data stats data/quickstart >/dev/null 2>&1; then
  echo "== synthetic raw data (Amazon 2014 formats) and preparation"
  rm -rf data/quickstart-raw data/quickstart
  $micn synth --preset quickstart --seed 1 --out data/quickstart-raw
  $micn prepare --input-format amazon2014 --reviews data/quickstart-raw/reviews_Synthetic_5.json \
    --meta data/quickstart-raw/meta_Synthetic.json --protocol din --max-hist-len 20 --seed 1 --out data/quickstart
fi
$micn data stats data/quickstart | sed -n 1,4p

echo "== training DIN + MICN on 2 ranks (configs/quickstart.toml)"
target/release/micn-launch --np 2 -- train --config configs/quickstart.toml --overwrite
echo "== summary (runs/quickstart/summary.json)"
cat runs/quickstart/summary.json
