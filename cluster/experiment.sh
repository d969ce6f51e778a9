#!/usr/bin/env bash
# One of the papers' tables on synthetic data, in one command:
#   bash cluster/experiment.sh table2-models | table3-phi | table4-history | table2-camn
# Sets up and builds (as the quickstart does), makes the synthetic Books- and Electronics-style
# sets once (data/synth-*), then runs configs/experiments/synthetic/NAME.toml with `micn sweep`.
# table2-camn (the CAMN paper's Table 2) uses the same sets with item attributes
# (data/synth-*-attributes) and first pretrains MFN's centres from a DIN on each.
# Running it again skips finished runs and resumes an interrupted one. The table and plots end up
# in runs/experiments/synthetic/NAME/report/.
set -euo pipefail
name=${1:?usage: bash cluster/experiment.sh table2-models|table3-phi|table4-history|table2-camn}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
sweep=configs/experiments/synthetic/$name.toml
[[ -f $sweep ]] || { echo "no sweep file $sweep" >&2; exit 2; }
source cluster/env.sh
bash cluster/setup-node.sh
cargo build --release --workspace
micn=target/release/micn

# make_set NAME PRESET PROTOCOL MAX_HIST_LEN SYNTH-ARGS...
make_set() {
  local out=data/synth-$1 raw=data/synth-$1-raw preset=$2 protocol=$3 hist=$4
  shift 4
  $micn data stats "$out" >/dev/null 2>&1 && return
  echo "== synthetic $1 data ($*)"
  rm -rf "$raw" "$out"
  $micn synth --preset "$preset" --seed 1 --out "$raw" "$@"
  $micn prepare --input-format amazon2014 --reviews "$raw/reviews_Synthetic_5.json" \
    --meta "$raw/meta_Synthetic.json" --oracle "$raw/oracle-model.json" \
    --protocol "$protocol" --max-hist-len "$hist" --seed 1 --out "$out"
  rm -rf "$raw"
}
books=(books-like dien 50 --users 20000 --items 2000 --categories 50 --clusters 50 --mean-history 20)
electronics=(electronics-like din 10 --users 4000 --items 1000 --categories 40 --clusters 30)
if [[ $name == table2-camn ]]; then
  # The same samples; every item's brand follows its hidden cluster with probability 0.8.
  make_set books-attributes "${books[@]}" --brands 25 --brand-signal 0.8
  make_set electronics-attributes "${electronics[@]}" --brands 15 --brand-signal 0.8
  # MFN's fixed embeddings and centres: a DIN (without MICN) trained on each set, then
  # Algorithm 1 over its item vectors (MFN's configs read data/synth-*-attributes/mfn-centres.safetensors).
  for set in books electronics; do
    centres=data/synth-$set-attributes/mfn-centres.safetensors
    [[ -f $centres ]] && continue
    din=runs/experiments/synthetic/table2-camn-centres/din-$set
    echo "== MFN centres for $set: DIN, then Algorithm 1"
    [[ -f $din/model.safetensors ]] || $micn train --config configs/experiments/synthetic/$set-attributes.toml \
      --set model.kind=\"din\" --set micn.enabled=false --set run.dir=\"$din\" --overwrite
    $micn export mfn-centres --run "$din" --interests 4 --out "$centres"
  done
else
  make_set books "${books[@]}"
  make_set electronics "${electronics[@]}"
fi

echo "== micn sweep $sweep"
$micn sweep "$sweep"
