#!/usr/bin/env bash
# Does the MICN loss add to a capacity-matched model on real data, and in which settings?
#
#   bash cluster/ablation.sh            # ~22 min on 2 cores; running it again skips finished runs
#
# DIN on the real S3-Rec Toys and Games 5-core (tests/fixtures/s3rec-toys-2014; din protocol,
# history 20, each item's category its fourth attribute), 3 seeds, trained with MICN (its loss
# on) and with MICN's wider embeddings alone (`micn.lambda = 0`), around the base setting of
# configs/experiments/ablation/toys-din.toml (2 epochs, φ 0.3, λ 1, K_max 4, 32 negatives,
# history 20), one setting changed at a time:
#   epochs 1 / 4 and history 5 / 10 (both variants: they change the width-only model too);
#   φ 0.1 / 1.0, λ 0.3 / 3, K_max 2 / 8, negatives 8 / 128 (MICN on; with λ = 0 none of these
#   reaches the main model, whose baseline is then the base setting's width-only run).
# Prints a Markdown table (mean test AUC over the seeds of each, the difference and its paired
# standard deviation over seeds) and writes it to runs/experiments/ablation/toys/table.md.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source cluster/env.sh
bash cluster/setup-node.sh
cargo build --release --workspace
micn=target/release/micn
base=configs/experiments/ablation/toys-din.toml
out=runs/experiments/ablation/toys
fixture=tests/fixtures/s3rec-toys-2014

if ! $micn data stats data/toys >/dev/null 2>&1; then
  echo "== preparing data/toys"
  rm -rf data/toys
  $micn prepare --input-format sequences --sequences $fixture/Toys_and_Games.txt \
    --item-attributes $fixture/Toys_and_Games_item2attributes.json --category-attribute 3 \
    --protocol din --max-hist-len 20 --seed 1 --out data/toys
fi

both='micn=[{enabled = true}, {enabled = true, lambda = 0.0}]'
sweep() { # NAME GRID...
  local name=$1
  shift
  local grids=()
  for g in "$@"; do grids+=(--grid "$g"); done
  echo "== $name"
  $micn sweep --config "$base" --repeats 3 --out "$out/$name" "${grids[@]}"
}
sweep base "$both"
sweep epochs "$both" 'train.epochs=[1, 4]'
sweep history "$both" 'data.max_hist_len=[5, 10]'
sweep phi 'micn.phi=[0.1, 1.0]'
sweep lambda 'micn.lambda=[0.3, 3.0]'
sweep k_max 'micn.k_max=[2, 8]'
sweep negatives 'micn.num_negatives=[8, 128]'

python3 - "$out" <<'PY' | tee "$out/table.md"
import json, statistics, sys, tomllib
from pathlib import Path

out = Path(sys.argv[1])
# The factors in the order of the sweeps above, each with its label and the key it varies.
factors = {
    "base": ("base", None),
    "epochs": ("epochs", ("train", "epochs")),
    "history": ("history", ("data", "max_hist_len")),
    "phi": ("φ", ("micn", "phi")),
    "lambda": ("λ", ("micn", "lambda")),
    "k_max": ("K_max", ("micn", "k_max")),
    "negatives": ("negatives", ("micn", "num_negatives")),
}
# (factor, value, width only?) -> {seed: test AUC}
runs = {}
for summary in sorted(out.glob("*/*/repeat-*/summary.json")):
    run = summary.parent
    factor = run.parent.parent.name
    cfg = tomllib.loads((run / "config.toml").read_text())
    key = factors[factor][1]
    value = cfg[key[0]][key[1]] if key else 0
    width_only = cfg["micn"]["lambda"] == 0.0
    runs.setdefault((factor, value, width_only), {})[cfg["train"]["seed"]] = json.loads(summary.read_text())["test_auc"]

print("| setting (others as the base) | MICN loss on | width only (λ = 0) | difference (paired std) |")
print("|---|---|---|---|")
order = list(factors)
seeds = []
for (factor, value, width_only), on in sorted(runs.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1], kv[0][2])):
    if width_only:
        continue
    # The width-only twin: the same setting where it changes the main model, else the base's.
    twin = runs.get((factor, value, True)) or runs.get(("base", 0, True), {})
    seeds = sorted(set(on) & set(twin))
    if not seeds:
        continue
    diffs = [on[s] - twin[s] for s in seeds]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    mean = statistics.mean
    label = "base" if factor == "base" else f"{factors[factor][0]} {value}"
    print(f"| {label} | {mean(on[s] for s in seeds):.4f} | {mean(twin[s] for s in seeds):.4f} | "
          f"{mean(diffs):+.4f} ({spread:.4f}) |")
print(f"\nDIN on the real Toys and Games 5-core, {len(seeds)} seeds; test AUC of the final model, trained on "
      "every training sample (batch 128, Adam lr 1e-3, 1 thread).")
PY
