#!/usr/bin/env bash
# The GPU path's check, in two halves (issue 14):
#
#   cluster/gpu-check.sh bundle [--out DIR]
#       On a build machine (Rust, libtorch): builds `micn` without MPI (cargo profile `bundle`:
#       stripped, no RUNPATH into the build tree) and puts it, with this script and a MANIFEST,
#       into DIR (default target/gpu-bundle). A few MB: what the device tool carries
#       (carry ["target/gpu-bundle"]). Refuses a binary that needs libmpi or has a RUNPATH.
#
#   cluster/gpu-check.sh run [--bundle DIR] [--device auto|cuda|cpu] [--out DIR] [--budget S]
#                            [--work DIR] [--keep]
#       On the machine to check (no Rust or MPI needed): finds libtorch through the Python that
#       has torch installed (MICN_PYTHON, /opt/torch/.venv/bin/python, the build cache's venv,
#       python3), puts its lib directory on LD_LIBRARY_PATH, and checks, on the device chosen
#       (`auto`: CUDA when libtorch sees a GPU, else the CPU):
#         start       the bundled binary starts, without any MPI library;
#         doctor      GPU name and memory, CUDA driver/runtime, cuDNN and NCCL versions;
#         data        a small synthetic dataset made on the spot (micn synth + micn prepare);
#         train       every model ± MICN (Wide&Deep with its hashed crosses, DIN, DIEN, MIND, MFN
#                     and CAMN with the item brands) trained for some steps on the device (a CPU
#                     rehearsal takes the device path, a GPU's code);
#         eval        micn eval of each run gives the AUC the run reported;
#         resume      a run stopped at step k and resumed ends bit-identical to a straight one
#                     (and a second straight run, to tell nondeterminism from a resume fault),
#                     with train.deterministic (libtorch's deterministic algorithms);
#         cpu_vs_cuda from the same CPU-made checkpoint, CPU and CUDA continue for the same
#                     steps: |test AUC difference| <= AUC_TOL and parameters' relative L2
#                     difference <= PARAM_TOL (on a machine without CUDA: CPU against CPU,
#                     which must be identical, and the CUDA half is SKIP);
#         throughput  DIN + MICN samples/s at global batch 128, 1024 and 8192 (with GPU
#                     utilisation from nvidia-smi where present);
#         transfers   host<->device transfers per step of every run, at most 2 (din+micn's named
#                     first);
#         time        everything within the goal: 300 s on CUDA (the issue's five minutes),
#                     1200 s on the CPU.
#       No check starts once --budget seconds are spent (default 540 on CUDA, 1200 on the CPU),
#       and a command running then is stopped: it and the checks left are said to be so.
#       Writes three files into DIR, so that a device tool that brings back a few files brings
#       back all of them: verdict.txt (one PASS/FAIL/SKIP/INFO line per check, then the
#       verdict: PASS, FAIL, INCOMPLETE when the budget left checks out, INTERRUPTED, REFUSED),
#       figures.jsonl (the figures, one JSON object per line) and logs.tar.gz (every command's
#       output; unpacked in the work directory's gpu-check/logs/ with --keep or --work). Exit
#       status 0 when every check ran and passed, 1 when one failed or did not run, 2 when the
#       check could not start (something missing: said on standard error and in the verdict
#       file).
#
#   cluster/gpu-check.sh all [run options]
#       bundle, then run from that bundle: the CPU rehearsal on a build machine.
set -uo pipefail

AUC_TOL=${AUC_TOL:-0.005}
PARAM_TOL=${PARAM_TOL:-0.01}
TORCH_WANTED=2.11.
script=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$script")

say() { printf '[gpu-check] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
# `value OPTION ARGS...`: the option's value (the first of ARGS), or a clear error when it has none.
value() {
  [[ $# -ge 2 && $2 != --* ]] || die "$1 needs a value"
  printf '%s' "$2"
}

# --- bundle ----------------------------------------------------------------------------------
bundle() {
  local out=""
  while (($#)); do
    case $1 in
      --out) out=$(value "$@") || exit 2; shift 2 ;;
      *) die "bundle: unknown argument $1" ;;
    esac
  done
  local repo
  repo=$(cd "$here/.." && pwd)
  [[ -f $repo/Cargo.toml && -d $repo/src ]] || die "bundle runs from the repository's cluster/ directory ($repo has no Cargo.toml)"
  out=${out:-$repo/target/gpu-bundle}
  # shellcheck source=/dev/null
  source "$repo/cluster/env.sh"
  command -v cargo >/dev/null || die "cargo not found: bundle runs on a build machine (bash cluster/setup-node.sh)"
  for tool in readelf objdump; do
    command -v $tool >/dev/null || die "$tool not found (binutils): needed to check the bundled binary"
  done
  say "building micn without MPI (profile bundle, target/nompi)"
  (cd "$repo" && MICN_RPATH='' cargo build --profile bundle --no-default-features --target-dir target/nompi \
    -p micn --bin micn) || die "the build failed"
  local bin=$repo/target/nompi/bundle/micn
  local dyn
  dyn=$(readelf -d "$bin")
  if grep -q 'libmpi' <<<"$dyn"; then die "$bin needs libmpi: $(grep NEEDED <<<"$dyn" | tr -s ' ')"; fi
  if grep -Eq 'RUNPATH|RPATH' <<<"$dyn"; then die "$bin has a RUNPATH: $(grep -E 'RUNPATH|RPATH' <<<"$dyn")"; fi
  rm -rf "$out"
  mkdir -p "$out"
  cp "$bin" "$out/micn"
  cp "$script" "$out/gpu-check.sh"
  local size glibc glibcxx
  size=$(stat -c %s "$out/micn")
  ((size < 64 * 1024 * 1024)) || die "the binary is $size bytes: over the 64 MiB the device tool carries"
  glibc=$(objdump -T "$out/micn" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
  glibcxx=$(objdump -T "$out/micn" | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -n 1)
  {
    echo "micn $(LD_LIBRARY_PATH=$(readlink -f "$repo/.libtorch")/lib "$out/micn" --version | awk '{print $2}'), built $(date -u +%FT%TZ) on $(uname -n)"
    echo "features: no mpi (single process, single GPU); profile bundle (stripped)"
    echo "size: $size bytes"
    echo "needs: $(grep NEEDED <<<"$dyn" | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
    echo "runpath: none (libtorch through LD_LIBRARY_PATH)"
    echo "newest symbol versions: $glibc $glibcxx"
    echo "libtorch at build: $(readlink -f "$repo/.libtorch" 2>/dev/null || echo unknown)"
  } >"$out/MANIFEST"
  cat "$out/MANIFEST" >&2
  say "bundle: $out ($(du -sh "$out" | cut -f1))"
}

# --- run -------------------------------------------------------------------------------------
# The Python whose torch this machine has, and torch's directory.
find_torch() {
  local cache=${MICN_CACHE:-${HOME:-/root}/.cache/micn}
  local candidates=("${MICN_PYTHON:-}" /opt/torch/.venv/bin/python "$cache/torch-2.11.0/bin/python" python3 python)
  local py dir
  for py in "${candidates[@]}"; do
    [[ -n $py ]] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    dir=$(timeout 60 "$py" -c 'import importlib.util as u; s = u.find_spec("torch"); print(s.submodule_search_locations[0] if s else "")' 2>/dev/null) || continue
    if [[ -n $dir && -f $dir/lib/libtorch_cpu.so ]]; then
      PY=$py
      TORCH_DIR=$dir
      return 0
    fi
  done
  refuse "no Python with torch found (tried: ${candidates[*]}); install torch==2.11.0 or set MICN_PYTHON=/path/to/python"
}

run() {
  local bundle_dir="" device=auto out=runs/gpu-check budget="" work="" keep=0 args=("$@")
  # --out first: the verdict file is made before anything else is read, so that every refusal
  # is written there (and no earlier check's verdict is left to be taken for this one's).
  while (($#)); do
    [[ $1 == --out && $# -ge 2 ]] && out=$2
    shift
  done
  mkdir -p "$out" || die "cannot create $out"
  OUT=$(readlink -f "$out")
  [[ -n $OUT ]] || die "cannot resolve $out"
  VERDICT=$OUT/verdict.txt
  FIGURES=$OUT/figures.jsonl
  : >"$VERDICT" || die "cannot write $VERDICT"
  : >"$FIGURES"
  rm -f "$OUT/logs.tar.gz"
  KEEP=1 LOGS="" CHILD="" SMI_PID=""
  trap pack_logs EXIT
  STARTED=$SECONDS
  # Until the device is known: the larger budget and goal (the CPU's).
  BUDGET=1200
  GOAL=1200
  set -- "${args[@]}"
  while (($#)); do
    case $1 in
      --keep) keep=1; shift; continue ;;
      --bundle | --device | --out | --budget | --work) ;;
      *) refuse "run: unknown argument $1" ;;
    esac
    [[ $# -ge 2 && $2 != --* ]] || refuse "$1 needs a value"
    case $1 in
      --bundle) bundle_dir=$2 ;;
      --device) device=$2 ;;
      --budget) budget=$2 ;;
      --work) work=$2 ;;
    esac
    shift 2
  done
  case $device in auto | cuda | cpu) ;; *) refuse "--device must be auto, cuda or cpu, not $device" ;; esac
  [[ -z $budget || $budget =~ ^[1-9][0-9]*$ ]] || refuse "--budget must be a whole number of seconds, not $budget"
  BUDGET=${budget:-$BUDGET}
  # A work directory of its own is removed at the end (unless --keep); one given is kept.
  if [[ -z $work ]]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/micn-gpu-check.XXXXXX") || refuse "cannot make a work directory in ${TMPDIR:-/tmp}"
  else
    mkdir -p "$work" || refuse "cannot create the work directory $work"
    WORK=$(readlink -f "$work")
    keep=1
  fi
  [[ -n $WORK && $WORK != / ]] || refuse "cannot use the work directory ${work:-(temporary)}"
  KEEP=$keep
  # Everything in one directory named for this script, made afresh: a --work directory's own
  # files are left alone, and nothing of an earlier check is taken for this one's.
  CHECK=$WORK/gpu-check
  rm -rf "$CHECK"
  LOGS=$CHECK/logs
  mkdir -p "$LOGS" || refuse "cannot create $LOGS"
  trap interrupted TERM INT HUP
  if [[ -z $bundle_dir ]]; then
    if [[ -x $here/micn ]]; then bundle_dir=$here; else bundle_dir=$here/../target/gpu-bundle; fi
  fi
  MICN=$(readlink -f "$bundle_dir/micn" 2>/dev/null)
  [[ -n $MICN && -x $MICN ]] || refuse "no micn binary in $bundle_dir: run \`cluster/gpu-check.sh bundle\` on a build machine and bring its output (or pass --bundle DIR)"

  find_torch
  local version
  version=$(sed -n "s/^__version__ = ['\"]\(.*\)['\"]/\1/p" "$TORCH_DIR/version.py" 2>/dev/null)
  [[ $version == "$TORCH_WANTED"* ]] || refuse "torch $version at $TORCH_DIR: micn links tch 0.24, which needs torch ${TORCH_WANTED}x"
  export LD_LIBRARY_PATH=$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  say "libtorch $version from $TORCH_DIR/lib (python: $PY)"
  if command -v ldd >/dev/null; then
    local missing
    missing=$(ldd "$MICN" 2>&1 | grep -E 'not found|version .* not found' || true)
    [[ -z $missing ]] || refuse "the bundled micn cannot load here: $(tr -s ' \t\n' ' ' <<<"$missing")"
    ldd "$MICN" >"$LOGS/ldd.txt" 2>&1
  fi
  local started_ok
  started_ok=$(timeout 60 "$MICN" --version 2>&1) || refuse "the bundled micn does not start: $started_ok"
  if grep -q libmpi "$LOGS/ldd.txt" 2>/dev/null; then
    record FAIL start "the bundled micn loads an MPI library: $(grep libmpi "$LOGS/ldd.txt" | tr -s ' \t' ' ')"
  else
    record PASS start "$started_ok starts without MPI; libtorch $version from LD_LIBRARY_PATH=$TORCH_DIR/lib"
  fi

  THREADS=$(nproc 2>/dev/null || echo 1)
  ((THREADS > 8)) && THREADS=8

  # --- doctor and the device ---
  # A CUDA start that hangs must not take the whole budget: the doctor gets two minutes.
  timeout --kill-after=10 120 "$MICN" doctor --json >"$LOGS/doctor.json" 2>"$LOGS/doctor.err"
  local rc=$?
  if ((rc == 124 || rc == 137)); then
    record FAIL doctor "micn doctor did not answer within 120 s"
    finish
  elif ((rc != 0)); then
    record FAIL doctor "micn doctor failed: $(tail -n 3 "$LOGS/doctor.err" | tr '\n' ' ')"
    finish
  fi
  timeout --kill-after=10 120 "$MICN" doctor >"$LOGS/doctor.txt" 2>&1
  local cuda
  cuda=$(jget "$LOGS/doctor.json" 'd["ranks"][0]["cuda_available"]')
  if [[ $device == cuda && $cuda != True ]]; then
    refuse "--device cuda, but libtorch sees no CUDA device here (micn doctor, doctor.txt in logs.tar.gz: $(grep -o 'CUDA [a-z].*' "$LOGS/doctor.txt" | head -n 2 | tr -s ' \n' ' '))"
  fi
  [[ $device == auto ]] && { [[ $cuda == True ]] && device=cuda || device=cpu; }
  DEVICE=$device
  if [[ $DEVICE == cuda ]]; then
    local facts
    facts=$(jrun "$LOGS/doctor.json" <<'EOF'
r = d["ranks"][0]; lib = r["cuda_libraries"]; g = r["gpus"]
missing = [k for k in ("driver", "runtime", "cudnn", "nccl") if not lib.get(k)] + ([] if g else ["GPU name"])
print(("missing: " + ", ".join(missing) + "; ") if missing else "", end="")
print("; ".join(f"{x['name']}, {x['memory_bytes'] / 2**30:.1f} GiB, compute capability {x['compute_capability']}" for x in g),
      f"| CUDA driver {lib['driver']}, runtime {lib['runtime']}, cuDNN {lib['cudnn']}, NCCL {lib['nccl']}")
EOF
    )
    if [[ $facts == missing:* ]]; then record FAIL doctor "$facts"; else record PASS doctor "$facts"; fi
  else
    local libs
    libs=$(jrun "$LOGS/doctor.json" <<'EOF'
lib = d["ranks"][0]["cuda_libraries"]
print(", ".join(f"{name} {lib[key] or 'none'}" for key, name in
                (("driver", "CUDA driver"), ("runtime", "runtime"), ("cudnn", "cuDNN"), ("nccl", "NCCL"))))
EOF
    )
    record PASS doctor "no GPU used ($([[ $cuda == True ]] && echo "CUDA present, --device cpu" || echo "libtorch sees no CUDA device")); $libs"
  fi
  if [[ $DEVICE == cuda ]]; then GOAL=300; BUDGET=${budget:-540}; fi
  say "device $DEVICE, goal $GOAL s, budget $BUDGET s, work directory $CHECK"

  check_data || finish
  check_train
  check_eval
  check_resume
  check_cpu_vs_cuda
  check_throughput
  check_transfers
  finish
}

# `record STATUS NAME TEXT`: one line of the verdict (and on standard error).
record() {
  local line
  line=$(printf '%-5s %-22s %s' "$1" "$2" "$3")
  echo "$line" >>"$VERDICT"
  say "$line"
}

# On exit: every log into OUT/logs.tar.gz; the work directory removed unless --keep.
pack_logs() {
  [[ -n $SMI_PID ]] && kill "$SMI_PID" 2>/dev/null
  if [[ -n $LOGS && -d $LOGS ]]; then
    tar -czf "$OUT/logs.tar.gz" -C "$CHECK" logs 2>/dev/null
  else
    tar -czf "$OUT/logs.tar.gz" -T /dev/null 2>/dev/null   # refused before any log was written
  fi
  ((KEEP)) || rm -rf "$WORK"
}

# Stopped from outside (the device tool's time limit, Ctrl-C): the command running is stopped
# too (timeout passes the signal on: a training checkpoints and ends), and the verdict says so.
interrupted() {
  trap - TERM INT HUP
  if [[ -n $CHILD ]]; then
    kill -TERM "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
  record FAIL interrupted "stopped by a signal after $((SECONDS - STARTED)) s; the checks above ran"
  echo "VERDICT INTERRUPTED: stopped after $((SECONDS - STARTED)) s" >>"$VERDICT"
  exit 1
}

# A check could not even start: say why, write it in the verdict, exit 2.
refuse() {
  [[ -n ${VERDICT:-} ]] && { record FAIL setup "$1"; echo "VERDICT REFUSED: $1" >>"$VERDICT"; }
  die "$1"
}

# `jget FILE EXPR`: print a Python expression over the JSON in FILE (as `d`).
jget() {
  "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# `jrun FILE <<'EOF' ... EOF`: run Python statements (read from standard input) over the JSON
# in FILE (as `d`).
jrun() {
  local code
  code=$(cat)
  "$PY" -c "import json, math, sys
d = json.load(open(sys.argv[1]))
$code" "$1"
}

# Seconds of the budget left (at least 1).
left() {
  local n=$((BUDGET - (SECONDS - STARTED)))
  ((n > 0)) && echo "$n" || echo 1
}

# `micn_run NAME ARGS...`: the bundled micn under the budget's timeout; standard output in
# NAME.out, the command and standard error in NAME.log (in the logs). Run in the background and
# waited for, so that a signal to this script is handled at once (see `interrupted`).
micn_run() {
  local log=$LOGS/$1
  shift
  echo "+ micn $*" >"$log.log"
  timeout --kill-after=10 "$(left)" "$MICN" "$@" >"$log.out" 2>>"$log.log" </dev/null &
  CHILD=$!
  wait "$CHILD"
  local rc=$?
  CHILD=""
  # timeout's own status (124: stopped; 137: killed after the grace time, or by another KILL):
  # said as such, so that the command's last line does not pass for its failure.
  if ((rc == 124)) || { ((rc == 137)) && spent; }; then
    echo "stopped: the budget of $BUDGET s ran out" >>"$log.log"
  elif ((rc > 128)); then
    echo "killed by signal $((rc - 128))" >>"$log.log"
  fi
  return $rc
}

# Whether the command NAME was stopped by the budget (what it would have shown is unknown).
budget_stopped() { [[ $(last_line "$1") == "stopped: the budget"* ]]; }

# The last line of NAME.log (the error line of a failed command).
last_line() { tail -n 1 "$LOGS/$1.log" 2>/dev/null; }

spent() { (((SECONDS - STARTED) >= BUDGET)); }

check_data() {
  local raw=$CHECK/raw
  DATA=$CHECK/data
  # With item brands, for the models that read item attributes (MFN, CAMN).
  if micn_run synth synth --preset quickstart --seed 1 --users 2000 --items 1000 --clusters 30 --categories 10 \
        --brands 10 --brand-signal 0.8 --out "$raw" \
     && micn_run prepare prepare --input-format amazon2014 --reviews "$raw/reviews_Synthetic_5.json" \
        --meta "$raw/meta_Synthetic.json" --protocol din --max-hist-len 20 --seed 1 --out "$DATA"; then
    record PASS data "$(grep -m1 '^samples' "$LOGS/prepare.out" | tr -s ' ')"
    # A GPU takes the device path by itself; the CPU rehearsal takes it too (the code a GPU runs).
    local device_path=false
    [[ $DEVICE == cpu ]] && device_path=true
    cat >"$CHECK/base.toml" <<EOF
device = "$DEVICE"

[data]
dir = "$DATA"
max_hist_len = 20

[micn]
num_negatives = 16

[train]
epochs = 1000
global_batch_size = 128
lr = 0.001
seed = 1
threads = $THREADS
eval_every_steps = 0
log_every_steps = 50
device_path = $device_path

[checkpoint]
every_steps = 0
every_minutes = 0
keep_last = 3
EOF
    return 0
  fi
  if budget_stopped synth || budget_stopped prepare; then record SKIP data "budget spent"; return 1; fi
  record FAIL data "micn synth or prepare failed: $(last_line prepare) $(last_line synth)"
  return 1
}

# `train NAME RUN_DIR [micn train arguments...]`: one run; its summary in RUN_DIR.
train() {
  local name=$1 dir=$2
  shift 2
  micn_run "train-$name" train --config "$CHECK/base.toml" --set "run.dir=\"$dir\"" "$@"
}

VARIANTS=(wide_deep din dien mind mfn camn wide_deep+micn din+micn dien+micn mind+micn mfn+micn camn+micn)

check_train() {
  local v kind micn dir steps=100
  for v in "${VARIANTS[@]}"; do
    kind=${v%+micn}
    [[ $v == *+micn ]] && micn=true || micn=false
    dir=$CHECK/runs/$v
    if spent; then record SKIP "train $v" "budget spent"; continue; fi
    if train "$v" "$dir" --overwrite --set "model.kind=\"$kind\"" --set "micn.enabled=$micn" \
         --set "model.wide_crosses=$([[ $kind == wide_deep ]] && echo true || echo false)" \
         --set "train.max_steps=$steps" && [[ -f $dir/summary.json ]]; then
      local facts
      facts=$(jrun "$dir/summary.json" <<'EOF'
ok = math.isfinite(d["test_auc"]) and math.isfinite(d["test_logloss"])
if d.get("stopped_by_signal"):
    print(f"NOT FINISHED: stopped at step {d['steps']} (the budget ran out)")
    sys.exit()
print(("" if ok else "NOT FINITE ") + f"{d['steps']} steps: test AUC {d['test_auc']:.4f}, log-loss {d['test_logloss']:.4f}, {d['steady_samples_per_sec']:.0f} samples/s, {d['seconds']:.1f} s")
EOF
      )
      if [[ $facts == NOT* ]]; then record FAIL "train $v" "$facts"; else record PASS "train $v" "on $DEVICE, $facts"; fi
      echo "{\"check\": \"train\", \"variant\": \"$v\", \"device\": \"$DEVICE\", \"summary\": $(cat "$dir/summary.json" | tr -d '\n')}" >>"$FIGURES"
    elif budget_stopped "train-$v"; then
      record SKIP "train $v" "budget spent (stopped while training)"
    else
      record FAIL "train $v" "micn train failed: $(last_line "train-$v")"
    fi
  done
}

check_eval() {
  local v dir worst="" failed=0 n=0 cut=0
  for v in "${VARIANTS[@]}"; do
    dir=$CHECK/runs/$v
    [[ -f $dir/summary.json ]] || continue
    if spent; then cut=1; break; fi
    if ! micn_run "eval-$v" eval --run "$dir" --json; then
      budget_stopped "eval-$v" && { cut=1; break; }
      failed=1
      worst+="${worst:+; }$v: micn eval failed: $(last_line "eval-$v")"
      continue
    fi
    n=$((n + 1))
    local diff
    diff=$(jget "$LOGS/eval-$v.out" "abs(d['auc'] - json.load(open('$dir/summary.json'))['test_auc'])") \
      || { failed=1; worst+="${worst:+; }$v: unreadable output"; continue; }
    if "$PY" -c "import sys; sys.exit(0 if float('$diff') <= 1e-6 else 1)"; then
      worst+="${worst:+; }$v |ΔAUC| $diff"
    else
      failed=1
      worst+="${worst:+; }$v |ΔAUC| $diff (> 1e-6)"
    fi
  done
  if ((failed)); then
    record FAIL eval "$worst"
  elif ((cut)) || { ((n == 0)) && spent; }; then
    record SKIP eval "budget spent (after $n runs scored${worst:+: $worst})"
  elif ((n == 0)); then
    record SKIP eval "no finished run to score"
  else
    record PASS eval "micn eval gives each run's own test AUC: $worst"
  fi
}

# `compare A B`: max |a-b| and relative L2 difference of two safetensors files, as one line
# "max_abs rel_l2 identical(bytes)".
compare() {
  timeout 120 "$PY" - "$1" "$2" <<'EOF'
import json, struct, sys, warnings
warnings.filterwarnings("ignore")  # torch without numpy says so on import
import torch
def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n]); base = 8 + n
    kinds = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        data = bytearray(raw[base + a:base + b])
        out[name] = torch.frombuffer(data, dtype=kinds[t["dtype"]]).to(torch.float64) if data else torch.zeros(0)
    return raw, out
ra, a = load(sys.argv[1]); rb, b = load(sys.argv[2])
assert a.keys() == b.keys(), "different tensors"
diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
norm = sum(float((a[k] ** 2).sum()) for k in a) ** 0.5
worst = max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)
print(f"{worst:.3g} {diff / max(norm, 1e-30):.3g} {'yes' if ra == rb else 'no'}")
EOF
}

check_resume() {
  local v=din+micn k=20 n=40 base=$CHECK/resume
  if spent; then record SKIP resume "budget spent"; return; fi
  # libtorch's deterministic algorithms: without them a GPU's atomic row sums vary in the last bits.
  local common=(--set 'model.kind="din"' --set micn.enabled=true --set train.deterministic=true)
  if train resume-straight "$base/straight" --overwrite "${common[@]}" --set "train.max_steps=$n" \
     && train resume-again "$base/again" --overwrite "${common[@]}" --set "train.max_steps=$n" \
     && train resume-stopped "$base/stopped" --overwrite "${common[@]}" --set "train.max_steps=$k" \
     && train resume-resumed "$base/stopped" --resume auto "${common[@]}" --set "train.max_steps=$n"; then
    local resumed repeat
    resumed=$(compare "$base/straight/model.safetensors" "$base/stopped/model.safetensors") || resumed="error"
    repeat=$(compare "$base/straight/model.safetensors" "$base/again/model.safetensors") || repeat="error"
    local r_same=${resumed##* } s_same=${repeat##* }
    local what="$v on $DEVICE (train.deterministic), stopped at step $k of $n and resumed: model.safetensors identical $r_same (max |Δ| ${resumed%% *}); two straight runs identical $s_same"
    if [[ $r_same == yes ]]; then
      record PASS resume "$what"
    elif [[ $s_same == no ]]; then
      record FAIL resume "$what: the device path is not deterministic, so no resume can be bit-identical"
    else
      record FAIL resume "$what"
    fi
  elif grep -qs '^stopped: the budget' "$LOGS"/train-resume-*.log; then
    record SKIP resume "budget spent (stopped while training)"
  else
    local failed
    failed=$(for f in "$LOGS"/train-resume-*.log; do [[ $(tail -n 1 "$f") == error:* ]] && tail -n 1 "$f"; done | head -n 1)
    record FAIL resume "a training run failed: ${failed:-see train-resume-*.log}"
  fi
}

check_cpu_vs_cuda() {
  local k=20 n=60 base=$CHECK/cross
  if spent; then record SKIP cpu_vs_cuda "budget spent"; return; fi
  local common=(--set 'model.kind="din"' --set micn.enabled=true)
  local other=cuda name=cpu_vs_cuda
  if [[ $DEVICE != cuda ]]; then
    other=cpu
    name="cpu_vs_cpu"
    record SKIP cpu_vs_cuda "no CUDA device: the same comparison runs CPU against CPU instead (plumbing only)"
  fi
  # The initial checkpoint is made on the CPU, so both continue from the same values.
  if ! train cross-init "$base/init" --overwrite --set 'device="cpu"' "${common[@]}" --set "train.max_steps=$k"; then
    if budget_stopped train-cross-init; then record SKIP "$name" "budget spent (stopped while training)"; return; fi
    record FAIL "$name" "the initial CPU run failed: $(last_line train-cross-init)"
    return
  fi
  local ckpt
  ckpt=$(ls -d "$base/init/checkpoints/step-"* 2>/dev/null | sort | tail -n 1)
  # Each continuation into a run directory of its own (a resume never writes into another run's).
  local second=$other
  [[ $other == cpu ]] && second=cpu-again
  if train cross-cpu "$base/cpu" --resume "$ckpt" --set 'device="cpu"' "${common[@]}" --set "train.max_steps=$n" \
     && train "cross-$second" "$base/$second" --resume "$ckpt" --set "device=\"$other\"" "${common[@]}" \
        --set "train.max_steps=$n"; then
    local params aucs
    params=$(compare "$base/cpu/model.safetensors" "$base/$second/model.safetensors") || params="nan nan no"
    aucs=$("$PY" - "$base/cpu/summary.json" "$base/$second/summary.json" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1]))["test_auc"]; b = json.load(open(sys.argv[2]))["test_auc"]
print(f"{a:.5f} {b:.5f} {abs(a - b):.2g}")
EOF
    ) || aucs="nan nan nan"
    read -r auc_cpu auc_other auc_diff <<<"$aucs"
    read -r max_abs rel_l2 same <<<"$params"
    local what="din+micn from the CPU checkpoint at step $k to $n: test AUC cpu $auc_cpu, $other $auc_other (|Δ| $auc_diff, tolerance $AUC_TOL); parameters max |Δ| $max_abs, relative L2 $rel_l2 (tolerance $PARAM_TOL)"
    local ok
    if [[ $other == cpu ]]; then
      [[ $same == yes ]] && ok=1 || ok=0
      what+="; identical bytes $same (required CPU against CPU)"
    else
      ok=$("$PY" -c "print(int($auc_diff <= $AUC_TOL and $rel_l2 <= $PARAM_TOL))" 2>/dev/null || echo 0)
    fi
    if ((ok)); then record PASS "$name" "$what"; else record FAIL "$name" "$what"; fi
    echo "{\"check\": \"$name\", \"auc_cpu\": $auc_cpu, \"auc_other\": $auc_other, \"param_max_abs\": \"$max_abs\", \"param_rel_l2\": \"$rel_l2\"}" >>"$FIGURES"
  else
    if grep -qs '^stopped: the budget' "$LOGS"/train-cross-*.log; then
      record SKIP "$name" "budget spent (stopped while training)"
      return
    fi
    record FAIL "$name" "a continued run failed: $(last_line train-cross-cpu) $(last_line "train-cross-$second")"
  fi
}

check_throughput() {
  if spent; then record SKIP throughput "budget spent"; return; fi
  local steps=20 warmup=5
  # The CPU rehearsal only shows that the command works; a CPU step at batch 8192 takes seconds.
  [[ $DEVICE == cpu ]] && { steps=2; warmup=1; }
  if [[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
      >"$LOGS/nvidia-smi.csv" 2>/dev/null &
    SMI_PID=$!
  fi
  local ok=1
  micn_run throughput bench throughput --device "$DEVICE" --model din+micn --batch 128 --batch 1024 \
    --batch 8192 --steps $steps --warmup $warmup --threads "$THREADS" --json || ok=0
  [[ -n $SMI_PID ]] && { kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null; SMI_PID=""; }
  if ((ok)); then
    local rows=$LOGS/throughput.out
    local util="no nvidia-smi"
    if [[ -s $LOGS/nvidia-smi.csv ]]; then
      util=$(awk -F', *' '{ if ($1 + 0 > max) max = $1 + 0; sum += $1; n++ } END { printf "GPU utilisation mean %.0f %%, peak %.0f %% over the whole bench", sum / n, max }' "$LOGS/nvidia-smi.csv")
    fi
    local rates
    rates=$(jrun "$rows" <<'EOF'
print("; ".join(f"batch {r['batch']}: {r['samples_per_sec']:.0f} samples/s ({r['ms_per_step']:.1f} ms/step, host {r.get('host_ms_per_step', float('nan')):.1f})" for r in d))
EOF
    )
    record PASS throughput "din+micn on $(jget "$rows" 'd[0]["device"]'), $steps steps after $warmup: $rates; $util"
    echo "{\"check\": \"throughput\", \"rows\": $(tr -d '\n' <"$rows")}" >>"$FIGURES"
    if [[ $DEVICE == cuda ]]; then
      record INFO "goal 8192" "$(jrun "$rows" <<'EOF'
r = [x for x in d if x["batch"] == 8192][0]["samples_per_sec"]
print(f"{r:.0f} samples/s on this GPU; the goal is 300000 on one H200: " + ("met" if r >= 300000 else "not met"))
EOF
      )"
    fi
  elif budget_stopped throughput; then
    record SKIP throughput "budget spent (stopped while measuring)"
  else
    record FAIL throughput "micn bench throughput failed: $(last_line throughput)"
  fi
}

check_transfers() {
  local s=$CHECK/runs/din+micn/summary.json
  if [[ ! -f $s ]]; then
    if spent; then record SKIP transfers "budget spent"; else record SKIP transfers "the din+micn run did not finish"; fi
    return
  fi
  # din+micn first, then every other run that finished: `name n` per run.
  local v n counts="" over=""
  for v in din+micn "${VARIANTS[@]}"; do
    [[ $v == din+micn && -n $counts ]] && continue
    s=$CHECK/runs/$v/summary.json
    [[ -f $s ]] || continue
    n=$(jget "$s" '"" if d.get("transfers_per_step") is None else d["transfers_per_step"]')
    if [[ -z $n ]]; then record FAIL transfers "$v's summary.json reports no host<->device transfer count"; return; fi
    counts+="$v $n; "
    "$PY" -c "import sys; sys.exit(0 if float('$n') <= 2 else 1)" || over+="$v "
  done
  if [[ -z $over ]]; then
    record PASS transfers "per step: ${counts%; } (goal: at most 2)"
  else
    record FAIL transfers "over the goal of 2 per step: ${over% }; per step: ${counts%; }"
  fi
}

finish() {
  local elapsed=$((SECONDS - STARTED))
  if ((elapsed <= GOAL)); then record PASS time "$elapsed s (goal: at most $GOAL s on $DEVICE)"
  else record FAIL time "$elapsed s, over the goal of $GOAL s on $DEVICE"; fi
  local fails passes skips unrun
  fails=$(grep -c '^FAIL' "$VERDICT")
  passes=$(grep -c '^PASS' "$VERDICT")
  skips=$(grep -c '^SKIP' "$VERDICT")
  # A check the budget left out was not shown to pass: the verdict cannot be PASS.
  unrun=$(grep -c '^SKIP.*budget spent' "$VERDICT")
  local verdict=PASS
  ((fails == 0)) || verdict=FAIL
  ((fails == 0 && unrun > 0)) && verdict=INCOMPLETE
  trap - TERM INT HUP
  {
    echo
    echo "VERDICT $verdict: $passes passed, $fails failed, $skips skipped ($unrun for the budget); device $DEVICE; host $(uname -n); $(date -u +%FT%TZ); $(head -n 1 "$(dirname "$MICN")/MANIFEST" 2>/dev/null || "$MICN" --version)"
  } >>"$VERDICT"
  cat "$VERDICT"
  [[ $verdict == PASS ]] && exit 0 || exit 1
}

DEVICE=unknown
case ${1:-} in
  bundle) shift; bundle "$@" ;;
  run) shift; run "$@" ;;
  all)
    shift
    bundle
    run --bundle "$here/../target/gpu-bundle" "$@"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$script"
    exit 2
    ;;
esac
