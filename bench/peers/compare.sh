#!/usr/bin/env bash
# micn beside DeepCTR-Torch and RecBole on the same real samples and settings, in one run: DIN and
# DIEN (and micn's with MICN, and with MICN's wider embeddings but its loss off, `micn.lambda = 0`:
# the capacity-matched ablation), test AUC and training samples/s, 1 thread, batch 128, embedding
# 18, history 20, Adam lr 1e-3, the same epochs.
#
#   bench/peers/compare.sh REVIEWS.json.gz [META.json.gz]
#   bench/peers/compare.sh SEQUENCES.txt [ITEM2ATTRIBUTES.json]
#
# REVIEWS: an Amazon 2014 5-core review file (reviews_Musical_Instruments_5.json.gz, say);
# SEQUENCES: time-ordered sequences (`user item item …`, e.g. S3-Rec's Toys_and_Games.txt in
# tests/fixtures/s3rec-toys-2014/), with the items' attributes for their categories.
# Env: OUT (default runs/peers), EPOCHS (2), SEEDS ("1 2 3"), MODELS ("din dien"; micn also runs
# wide_deep, mind, mfn and camn, the peers only din and dien), CATEGORY_ATTRIBUTE (3: for sequences,
# which attribute is an item's category). MFN's centres are pretrained (`micn export mfn-centres`)
# from the seed's DIN run without MICN, trained first when MODELS does not list din before mfn.
#
# DeepCTR-Torch 0.3.0 and RecBole 1.2.1 go each into its own virtual environment under the micn
# cache, which reuses the torch that set-up installed (a .pth file), with their other dependencies
# from PyPI (RecBole's pinned below NumPy 2, which it does not run on): neither is a dependency of
# micn. The samples reach them through `micn data export` (the arrays micn's loader collates;
# RecBole's as its benchmark files, written from them by recbole_peer.py). PEERS ("deepctr
# recbole") picks the peers. Prints a Markdown table, and writes every result to OUT/results.jsonl.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
source cluster/env.sh
[[ $# -ge 1 ]] || { sed -n 2,23p "$0" >&2; exit 2; }
[[ $1 == -h || $1 == --help ]] && { sed -n 2,23p "$0"; exit 0; }
# Inputs are checked before any set-up or build.
for input in "$@"; do [[ -f $input ]] || { echo "error: $input: no such file" >&2; exit 3; }; done
input=$1
second=${2:-}
out=${OUT:-runs/peers}
epochs=${EPOCHS:-2}
seeds=${SEEDS:-1 2 3}
models=${MODELS:-din dien}
peers=${PEERS:-deepctr recbole}
for name in $peers; do
  [[ $name == deepctr || $name == recbole ]] || { echo "error: PEERS: unknown peer $name (deepctr, recbole)" >&2; exit 3; }
done

bash cluster/setup-node.sh
cargo build --release -p micn --bin micn
micn=target/release/micn

# --- the peers' environments ----------------------------------------------------------------
source bench/peers/peer-venv.sh
declare -A peer_python
if [[ " $peers " == *" deepctr "* ]]; then
  peer_venv deepctr-torch==0.3.0 numpy scikit-learn tqdm requests
  peer_python[deepctr]=$peer/bin/python
fi
if [[ " $peers " == *" recbole "* ]]; then
  peer_venv recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14" "scikit-learn<1.6" tqdm colorlog colorama pyyaml \
    tabulate texttable thop tensorboard
  peer_python[recbole]=$peer/bin/python
fi

# --- the same samples for both ---------------------------------------------------------------
source bench/peers/samples.sh
shared_samples "$input" "$second" "$out"

# train_micn MODEL RUN-DIR SETS...: one micn run at the comparison's settings (its directory
# added to `trained`: the runs of this call, on this call's samples).
trained=" "
train_micn() {
  local model=$1 run=$2
  shift 2
  trained+="$run "
  $micn --comm single train --config configs/books-$model.toml --overwrite \
    --set data.dir="$out/data" --set run.dir="$run" --set device=cpu --set train.threads=1 \
    --set train.epochs="$epochs" --set train.lr=1e-3 --set train.global_batch_size=128 \
    --set train.seed="$seed" --set data.valid_share=0 "$@" --set train.log_every_steps=100000 \
    >/dev/null 2>"$run.log" || { cat "$run.log" >&2; exit 1; }
}

results=$out/results.jsonl
: >"$results"
for seed in $seeds; do
  for model in $models; do
    model_sets=()
    if [[ $model == mfn ]]; then
      # MFN's fixed embeddings and centres, from this seed's DIN without MICN.
      din=$out/micn-din-micn_off-seed$seed
      # A DIN run of an earlier call may have trained on other samples or settings: not reused.
      [[ $trained == *" $din "* ]] || train_micn din "$din" --set micn.enabled=false
      centres=$out/mfn-centres-seed$seed.safetensors
      $micn export mfn-centres --run "$din" --seed "$seed" --out "$centres" >&2
      model_sets=(--set model.mfn_pretrained="\"$centres\"")
    fi
    # MICN off, on, and its wider embeddings with its loss off (λ = 0).
    for variant in off on width_only; do
      run=$out/micn-$model-micn_$variant-seed$seed
      case $variant in
        off) micn_sets=(--set micn.enabled=false) ;;
        on) micn_sets=(--set micn.enabled=true) ;;
        width_only) micn_sets=(--set micn.enabled=true --set micn.lambda=0) ;;
      esac
      train_micn "$model" "$run" "${micn_sets[@]}" "${model_sets[@]}"
      python3 - "$run/summary.json" "$model" "$variant" "$seed" >>"$results" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({"trainer": "micn", "model": sys.argv[2], "micn": sys.argv[3], "seed": int(sys.argv[4]),
                  "samples_per_sec": s["samples_per_sec"], "test_auc": s["test_auc"]}))
EOF
    done
    [[ $model == din || $model == dien ]] || continue
    for name in $peers; do
      "${peer_python[$name]}" "bench/peers/${name}_peer.py" --data "$out/arrays" --model "$model" --epochs "$epochs" \
        --seed "$seed" | tail -n 1 | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["seed"]='"$seed"'; r["micn"]="off"; print(json.dumps(r))' >>"$results"
    done
  done
done

python3 - "$results" "$epochs" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
groups = {}
order = {"off": 0, "on": 1, "width_only": 2}
label = {"off": "no", "on": "yes", "width_only": "width only (λ = 0)"}
for r in rows:
    groups.setdefault((r["model"], r["trainer"], order[r["micn"]]), []).append(r)
print(f"| model | trainer | MICN | test AUC (mean ± std over {len({r['seed'] for r in rows})} seeds) | samples/s (median) |")
print("|---|---|---|---|---:|")
for (model, trainer, micn), rs in sorted(groups.items()):
    micn = [k for k, v in order.items() if v == micn][0]
    aucs = [r["test_auc"] for r in rs]
    std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
    rate = statistics.median(r["samples_per_sec"] for r in rs)
    print(f"| {model.upper()} | {trainer} | {label[micn]} | {statistics.mean(aucs):.4f} ± {std:.4f} | {rate:,.0f} |")
print(f"\n{sys.argv[2]} epochs, batch 128, 1 thread, embedding 18, history 20, Adam lr 1e-3")
EOF
