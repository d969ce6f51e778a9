#!/usr/bin/env bash
# A real single-node Slurm, from Debian's packages, running the shipped cluster/slurm.sbatch:
#
#   bash cluster/slurm-check.sh
#
# Installs munge and slurm-wlm when missing (apt, root), starts munged, slurmctld and slurmd
# with a configuration of their own under ${MICN_SLURM_DIR:-/tmp/micn-slurm} (one node, this
# machine's cores), then:
#   1. submits cluster/slurm.sbatch unchanged with `sbatch --ntasks=2 --wait` on a small
#      synthetic dataset, and trains the same configuration with `micn-launch --np 2`:
#      the two model.safetensors must be identical;
#   2. runs `srun -n 2 micn doctor` without `--mpi=pmix`, which micn must refuse (exit 3);
#   3. runs `micn-launch` inside an allocation of 2 tasks without a hostfile: mpirun places
#      its 2 ranks in the allocation's slots (the model again identical), and 3 ranks are
#      refused by mpirun for want of slots (exit 3), not oversubscribed.
# The daemons are stopped at the end, whatever happens. Needs root.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source cluster/env.sh
say() { printf '[slurm-check] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (it installs and starts Slurm's daemons)"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing munge and slurm-wlm through apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
bash cluster/setup-node.sh
cargo build --release --workspace
micn=$repo/target/release/micn

state=${MICN_SLURM_DIR:-/tmp/micn-slurm}
rm -rf "$state"
mkdir -p "$state"/{ctld,d,log}
cpus=$(nproc)
node=$(hostname -s)
cat > "$state/slurm.conf" <<CONF
ClusterName=micn-check
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=check Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$state/slurm.conf

pids=()
started_munge=
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -z $started_munge ]] || pkill -x munged || true
}
trap stop EXIT
mkdir -p /run/munge && chown munge: /run/munge 2>/dev/null || true
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged
  started_munge=1
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n >/dev/null || die "munged did not start: see /var/log/munge/munged.log"
fi
slurmctld -D >"$state/log/slurmctld.out" 2>&1 & pids+=($!)
slurmd -D -N "$node" >"$state/log/slurmd.out" 2>&1 & pids+=($!)
for _ in $(seq 60); do
  timeout 5 sinfo -h -o %t 2>/dev/null | grep -qx idle && break
  sleep 1
done
sinfo -h -o %t | grep -qx idle || die "the node did not come up: see $state/log"
say "Slurm is up: $(sinfo -h -o '%P %D %t %c')"

work=$state/work
mkdir -p "$work"
"$micn" synth --preset quickstart --seed 5 --users 2000 --items 800 --out "$work/raw" >/dev/null 2>"$work/synth.log"
"$micn" prepare --input-format amazon2014 --reviews "$work/raw/reviews_Synthetic_5.json" \
  --protocol din --max-hist-len 20 --seed 1 --out "$work/data" >/dev/null 2>"$work/prepare.log"
common=(--set "data.dir=\"$work/data\"" --set train.max_steps=60 --set train.epochs=1 --set train.threads=1)

say "1. sbatch --ntasks=2 --wait cluster/slurm.sbatch (unchanged)"
started=$SECONDS
sbatch --ntasks=2 --wait --output="$work/slurm-%j.out" cluster/slurm.sbatch configs/quickstart.toml \
  "${common[@]}" --set "run.dir=\"$work/slurm-run\"" >/dev/null || { cat "$work"/slurm-*.out >&2; die "the batch job failed"; }
say "   finished in $((SECONDS - started)) s: $(grep -h 'test AUC' "$work"/slurm-*.out | head -n 1)"
"$repo/target/release/micn-launch" --np 2 --threads 1 --config configs/quickstart.toml \
  "${common[@]}" --set "run.dir=\"$work/launch-run\"" >/dev/null 2>"$work/launch.err" || { cat "$work/launch.err" >&2; die "micn-launch failed"; }
world=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['world_size'])" "$work/slurm-run/summary.json")
[[ $world == 2 ]] || die "the Slurm job trained on a world of $world, not 2"
if cmp -s "$work/slurm-run/model.safetensors" "$work/launch-run/model.safetensors"; then
  say "   the Slurm job's model equals micn-launch --np 2's, byte for byte"
else
  die "the Slurm job's model differs from micn-launch --np 2's"
fi

say "2. srun -n 2 micn doctor, without --mpi=pmix"
set +e
srun -n 2 "$micn" doctor >"$work/srun.out" 2>&1
code=$?
set -e
grep -q "srun --mpi=pmix" "$work/srun.out" && [[ $code -ne 0 ]] \
  || { cat "$work/srun.out" >&2; die "srun without PMI was not refused (exit $code)"; }
say "   refused (exit $code): $(grep -m1 'Slurm started' "$work/srun.out")"
say "3. micn-launch inside an allocation of 2 tasks, without a hostfile"
launch_in_job() { # NP LOG: micn-launch --np NP as a batch job of 2 tasks; its status
  local code=0
  sbatch --ntasks=2 --wait --output="$work/$2" --wrap "$(printf '%q ' "$repo/target/release/micn-launch" \
    --np "$1" --config configs/quickstart.toml "${common[@]}" --set "run.dir=\"$work/alloc-run-$1\"")" \
    >/dev/null || code=$?
  return "$code"
}
launch_in_job 2 alloc-2.out || { cat "$work/alloc-2.out" >&2; die "micn-launch --np 2 in the allocation failed"; }
grep -q "in Slurm job [0-9]*: mpirun places the ranks" "$work/alloc-2.out" \
  || { cat "$work/alloc-2.out" >&2; die "micn-launch did not say it runs in the allocation"; }
cmp -s "$work/alloc-run-2/model.safetensors" "$work/launch-run/model.safetensors" \
  || die "micn-launch's model in the allocation differs from its model outside"
say "   2 ranks: $(grep -m1 -o 'in Slurm job [0-9]*: mpirun places the ranks on its nodes and slots' "$work/alloc-2.out"); the model equals the one outside, byte for byte"
set +e
launch_in_job 3 alloc-3.out
code=$?
set -e
grep -q "not enough slots" "$work/alloc-3.out" && [[ $code -eq 3 && ! -e $work/alloc-run-3/summary.json ]] \
  || { cat "$work/alloc-3.out" >&2; die "3 ranks in 2 tasks' slots were not refused (job status $code)"; }
say "   3 ranks: refused by mpirun for want of slots, not restarted (job status $code)"
say "all Slurm checks passed"
