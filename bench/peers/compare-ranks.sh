#!/usr/bin/env bash
# micn on N MPI ranks beside PyTorch DDP on N processes (DeepCTR-Torch's DIN and DIEN in
# DistributedDataParallel, gloo), on the same real samples and settings, in one run: training
# samples/s at each N, the speed-up over one rank, and the test AUC. Both split a global batch of
# 128 over the ranks (or, with BATCH_PER_RANK=B, train N × B at a time, B per rank), one thread
# each, embedding 18, history 20, Adam lr 1e-3, the same epochs; MICN off (the peer has none).
#
#   bench/peers/compare-ranks.sh SEQUENCES.txt [ITEM2ATTRIBUTES.json]
#   bench/peers/compare-ranks.sh REVIEWS.json.gz [META.json.gz]
#
# Env: OUT (default runs/peers-ranks), EPOCHS (2), SEEDS ("1"), MODELS ("din dien"), RANKS ("1 2"),
# BATCH_PER_RANK (unset: the global batch of 128 split).
# micn's ranks start through micn-launch (mpirun); the peer's through torchrun. The peer's
# environment is compare.sh's (DeepCTR-Torch 0.3.0 over the set-up's torch). Prints a Markdown
# table, and writes every result to OUT/results.jsonl.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
source cluster/env.sh
[[ $# -ge 1 ]] || { sed -n 2,15p "$0" >&2; exit 2; }
[[ $1 == -h || $1 == --help ]] && { sed -n 2,15p "$0"; exit 0; }
# Inputs are checked before any set-up or build.
for input in "$@"; do [[ -f $input ]] || { echo "error: $input: no such file" >&2; exit 3; }; done
out=${OUT:-runs/peers-ranks}
epochs=${EPOCHS:-2}
seeds=${SEEDS:-1}
models=${MODELS:-din dien}
ranks=${RANKS:-1 2}
per_rank=${BATCH_PER_RANK:-}
[[ -z $per_rank || $per_rank =~ ^[1-9][0-9]*$ ]] || { echo "error: BATCH_PER_RANK must be a whole number ≥ 1, not $per_rank" >&2; exit 3; }
for model in $models; do
  [[ $model == din || $model == dien ]] || { echo "error: MODELS: $model: the peer runs din and dien only" >&2; exit 3; }
done

bash cluster/setup-node.sh
cargo build --release --workspace --bins
source bench/peers/peer-venv.sh
peer_venv deepctr-torch==0.3.0 numpy scikit-learn tqdm requests
source bench/peers/samples.sh
shared_samples "$1" "${2:-}" "$out"

results=$out/results.jsonl
: >"$results"
# record TRAINER MODEL RANKS SEED: a JSON document on standard input (micn's summary.json, or
# the peer's output, whose last line is its result), tagged, into the results.
record() {
  python3 -c 'import json, sys
text = sys.stdin.read().strip()
try:
    r = json.loads(text)
except ValueError:
    r = json.loads(text.splitlines()[-1])
print(json.dumps({"trainer": sys.argv[1], "model": sys.argv[2], "ranks": int(sys.argv[3]), "seed": int(sys.argv[4]),
                  "samples_per_sec": r["samples_per_sec"], "test_auc": r["test_auc"]}))' "$@" >>"$results"
}
for seed in $seeds; do
  for model in $models; do
    for n in $ranks; do
      batch=$(( ${per_rank:-0} > 0 ? per_rank * n : 128 ))
      run=$out/micn-$model-np$n-seed$seed
      printf '[peers] micn %s on %s rank(s), seed %s\n' "$model" "$n" "$seed" >&2
      target/release/micn-launch --np "$n" --threads 1 -- train --config "configs/books-$model.toml" --overwrite \
        --set data.dir="\"$out/data\"" --set run.dir="\"$run\"" --set device=cpu --set train.threads=1 \
        --set train.epochs="$epochs" --set train.lr=1e-3 --set train.global_batch_size="$batch" \
        --set train.seed="$seed" --set data.valid_share=0 --set micn.enabled=false \
        --set train.log_every_steps=100000 >"$run.log" 2>&1 || { cat "$run.log" >&2; exit 1; }
      record micn "$model" "$n" "$seed" <"$run/summary.json"
      printf '[peers] DDP %s on %s process(es), seed %s\n' "$model" "$n" "$seed" >&2
      "$peer/bin/python" -m torch.distributed.run --standalone --nproc_per_node "$n" bench/peers/deepctr_peer.py \
        --ddp --data "$out/arrays" --model "$model" --epochs "$epochs" --seed "$seed" --batch "$batch" \
        2>"$out/ddp-$model-np$n.log" \
        | record "DeepCTR-Torch + DDP" "$model" "$n" "$seed"
    done
  done
done

python3 - "$results" "$epochs" "$per_rank" <<'EOF2'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["model"], r["trainer"], r["ranks"]), []).append(r)
rate = {key: statistics.median(r["samples_per_sec"] for r in rs) for key, rs in groups.items()}
seeds = len({r["seed"] for r in rows})
print(f"| model | trainer | ranks | test AUC (mean over {seeds} seed(s)) | samples/s (median) | speed-up over 1 rank |")
print("|---|---|---:|---:|---:|---:|")
for (model, trainer, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "micn", kv[0][2])):
    one = rate.get((model, trainer, 1))
    speedup = f"{rate[(model, trainer, n)] / one:.2f}×" if one else "—"
    auc = statistics.mean(r["test_auc"] for r in rs)
    print(f"| {model.upper()} | {trainer} | {n} | {auc:.4f} | {rate[(model, trainer, n)]:,.0f} | {speedup} |")
batch = f"{sys.argv[3]} per rank (N × {sys.argv[3]} in all)" if sys.argv[3] else "global batch 128 split over the ranks"
print(f"\n{sys.argv[2]} epochs, {batch}, 1 thread per rank, embedding 18, history 20, Adam lr 1e-3")
EOF2
