#!/usr/bin/env bash
# The README's second command: set up this node, build, and run the whole test suite: the cargo
# tests, then the GPU check's rehearsal on this machine (the build without MPI, bundled as it is
# carried to a GPU machine, through every check of cluster/gpu-check.sh on the device there is).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source cluster/env.sh
# The tests check what micn does started by hand: not a log filter, a launcher's job, an MPI or
# Slurm rank, or a batch allocation (whose nodes mpirun would take) this shell may have inherited.
unset RUST_LOG MICN_LAUNCH_ID MICN_QUIET_RANKS MICN_MPI_START_TIMEOUT OMPI_COMM_WORLD_SIZE PMIX_RANK \
    SLURM_PROCID SLURM_STEP_NUM_TASKS SLURM_JOBID SLURM_JOB_ID SLURM_NODELIST SLURM_JOB_NODELIST \
    PE_HOSTFILE
bash cluster/setup-node.sh
cargo build --release --workspace
cargo test --release --workspace
bash cluster/gpu-check.sh all --out target/gpu-check-rehearsal
