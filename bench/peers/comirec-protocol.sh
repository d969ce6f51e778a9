#!/usr/bin/env bash
# MIND trained for retrieval, scored the way ComiRec (Cen et al., KDD 2020) scores it: users split
# into training, validation and test users; a model trained on the training users only; each
# held-out user's first 80 % of history (by time) seen, the rest retrieved from the whole item
# set (each interest its top N by inner product, merged): recall, hit rate and NDCG at 20 and 50,
# beside ComiRec's MostPopular baseline and torch-rechub's MIND on the same clicked samples.
# micn's MIND with and without MICN. As ComiRec does, each trainer's model is the one of the epoch
# with the best recall@50 on the validation users; the test users are scored once, with it.
#
#   bench/peers/comirec-protocol.sh COMIREC_DIR NAME   # ComiRec's files: NAME_train.txt, NAME_valid.txt, NAME_test.txt
#   bench/peers/comirec-protocol.sh SEQUENCES.txt      # `user item item …`: split as ComiRec's preprocess splits
#
# COMIREC_DIR: the output of ComiRec's `preprocess/data.py` (its Amazon Books: data/book_data,
# NAME book). SEQUENCES: e.g. tests/fixtures/s3rec-toys-2014/Toys_and_Games.txt, split by
# bench/peers/comirec_split.py (ComiRec's item and user filters, its seed, 8 : 1 : 1).
# Env: OUT (default runs/comirec), EPOCHS (8), SEEDS ("1 2 3"), CONFIG
# (configs/books-mind-retrieval.toml: ComiRec's sizes). Prints a Markdown table and writes every
# result to OUT/results.jsonl.
#
# torch-rechub 0.9.0 goes into its own virtual environment under the micn cache, reusing the torch
# that set-up installed (a .pth file), with numpy, pandas, scikit-learn and tqdm from PyPI: it is
# never a dependency of micn. It reads the samples through `micn data export`
# (bench/peers/rechub_mind_peer.py says how it is run).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
source cluster/env.sh
[[ $# -ge 1 ]] || { sed -n 2,23p "$0" >&2; exit 2; }
[[ $1 == -h || $1 == --help ]] && { sed -n 2,23p "$0"; exit 0; }
# Inputs are checked before any set-up or build.
if [[ $# -ge 2 ]]; then
  for split in train valid test; do
    [[ -f $1/$2_$split.txt ]] || { echo "error: $1/$2_$split.txt: no such file" >&2; exit 3; }
  done
else
  [[ -f $1 ]] || { echo "error: $1: no such file" >&2; exit 3; }
fi
out=${OUT:-runs/comirec}
epochs=${EPOCHS:-8}
seeds=${SEEDS:-1 2 3}
config=${CONFIG:-configs/books-mind-retrieval.toml}
say() { printf '[comirec] %s\n' "$*" >&2; }

bash cluster/setup-node.sh
cargo build --release -p micn --bin micn
micn=target/release/micn
mkdir -p "$out"

source bench/peers/peer-venv.sh
source bench/peers/samples.sh
peer_venv torch-rechub==0.9.0 numpy pandas scikit-learn tqdm

if [[ -d $1 ]]; then
  files=$1 name=${2:?give the files\' NAME (book for ComiRec\'s Amazon Books)}
else
  files=$out/split name=split
  say "splitting the users of $1 as ComiRec's preprocessing does"
  python3 bench/peers/comirec_split.py "$1" "$files" "$name" >&2
fi
for part in train valid test; do
  [[ -f $files/${name}_$part.txt ]] || { echo "$files/${name}_$part.txt: not found" >&2; exit 2; }
done

say "preparing the training users (din protocol, history 20)"
remove_earlier_samples "$out" "$files/${name}_train.txt"
$micn prepare --input-format interactions --interactions "$files/${name}_train.txt" --protocol din \
  --max-hist-len 20 --seed 1 --out "$out/data"
$micn data export "$out/data" --out "$out/arrays" --max-hist-len 20 >&2
# A checkpoint at every epoch's end (the clicked samples over the batch), to select from.
epoch_steps=$($micn data stats --json "$out/data" | python3 -c 'import json, sys
print(json.load(sys.stdin)["train"]["positives"] // 128)')

results=$out/results.jsonl
: >"$results"
for seed in $seeds; do
  for variant in off on; do
    run=$out/mind-micn_$variant-seed$seed
    enabled=$([[ $variant == on ]] && echo true || echo false)
    say "training MIND (MICN $variant, seed $seed)"
    $micn --comm single train --config "$config" --overwrite --set data.dir="\"$out/data\"" \
      --set run.dir="\"$run\"" --set device='"cpu"' --set train.threads=1 --set train.epochs="$epochs" \
      --set train.seed="$seed" --set data.valid_share=0 --set micn.enabled="$enabled" \
      --set checkpoint.every_steps="$epoch_steps" --set checkpoint.every_minutes=0 \
      --set checkpoint.keep_last=1000 --set train.log_every_steps=100000 >/dev/null 2>"$run.log" ||
      { cat "$run.log" >&2; exit 1; }
    # ComiRec's selection: the epoch whose validation recall@50 is best (the first of equals).
    best="" best_recall=-1
    for checkpoint in "$run"/checkpoints/step-*; do
      recall=$($micn eval --json --retrieval 50 --checkpoint "$checkpoint" --heldout "$files/${name}_valid.txt" \
        2>>"$run.log" | python3 -c 'import json, sys; print(json.load(sys.stdin)["model"][0]["recall"])')
      if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$recall" "$best_recall"; then
        best=$checkpoint best_recall=$recall
      fi
    done
    for part in valid test; do
      $micn eval --json --retrieval 20,50 --checkpoint "$best" --heldout "$files/${name}_$part.txt" 2>>"$run.log" |
        python3 -c 'import json, sys
r = json.load(sys.stdin)
s = json.load(open(sys.argv[4]))
r.update(trainer="micn", micn=sys.argv[1], seed=int(sys.argv[2]), part=sys.argv[3], seconds=s["seconds"],
         selected=sys.argv[5].rsplit("/", 1)[-1])
print(json.dumps(r))' "$variant" "$seed" "$part" "$run/summary.json" "$best" >>"$results"
    done
  done
  say "training torch-rechub's MIND (seed $seed)"
  OMP_NUM_THREADS=1 "$peer/bin/python" -W ignore bench/peers/rechub_mind_peer.py --data "$out/data" \
    --arrays "$out/arrays" --heldout "$files/${name}_valid.txt" "$files/${name}_test.txt" --epochs "$epochs" \
    --seed "$seed" 2>"$out/rechub-seed$seed.log" |
    python3 -c 'import json, sys
for line, part in zip(sys.stdin, ("valid", "test")):
    r = json.loads(line)
    r.update(micn="off", seed=int(sys.argv[1]), part=part)
    print(json.dumps(r))' "$seed" >>"$results"
done

python3 - "$results" "$epochs" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
seeds = sorted({r["seed"] for r in rows})
def cell(values):
    values = [100 * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"
metrics = [("recall", "recall"), ("NDCG", "ndcg_comirec"), ("HR", "hit_rate")]
print("| part | retriever | " + " | ".join(f"{m}@{n} (%)" for n in (20, 50) for m, _ in metrics) + " | training s |")
print("|---|---|" + "---:|" * 7)
for part in ("valid", "test"):
    part_rows = [r for r in rows if r["part"] == part]
    micn = [r for r in part_rows if r["trainer"] == "micn"]
    groups = [("most popular", [r["most_popular"] for r in micn if r["micn"] == "off"], None)]
    for trainer, variant, label in [("torch-rechub", "off", "torch-rechub MIND"), ("micn", "off", "micn MIND"),
                                    ("micn", "on", "micn MIND + MICN")]:
        chosen = [r for r in part_rows if r["trainer"] == trainer and r["micn"] == variant]
        groups.append((label, [r["model"] for r in chosen], statistics.median(r["seconds"] for r in chosen)))
    for label, results, seconds in groups:
        cells = [cell([res[i][key] for res in results]) for i in (0, 1) for _, key in metrics]
        timing = "" if seconds is None else f"{seconds:.1f}"
        print(f"| {part} ({part_rows[0]['users']} users) | {label} | " + " | ".join(cells) + f" | {timing} |")
print(f"\nmean ± std over seeds {seeds}; {sys.argv[2]} epochs, batch 128, 1 thread; NDCG is ComiRec's; "
      "training seconds: the median (all epochs)")
tests = [r for r in rows if r["part"] == "test"]
print("selected by validation recall@50: micn MIND", [r["selected"] for r in tests if r["trainer"] == "micn" and r["micn"] == "off"],
      "+ MICN", [r["selected"] for r in tests if r["trainer"] == "micn" and r["micn"] == "on"],
      "torch-rechub epochs", [r["selected_epoch"] for r in tests if r["trainer"] == "torch-rechub"])
EOF
