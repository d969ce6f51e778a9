#!/usr/bin/env bash
# Idempotent node set-up for micn: installs what is missing and nothing else.
#
#   - OpenMPI, libclang, pkg-config and the DejaVu fonts (labels of `micn report`'s plots) through
#     apt (needs root when any is missing);
#   - torch==2.11.0 (the libtorch that tch 0.24 links) with its dependencies into a cache
#     outside the checkout, reused when present: ${MICN_CACHE:-$HOME/.cache/micn}/torch-2.11.0;
#   - onnx, onnxscript and onnxruntime into that torch (what `python -m micn_twin onnx` exports a
#     trained model with, and checks the exported file against);
#   - tensorboard==2.21.0 in a virtual environment of its own beside it (the tests read micn's
#     event files back with TensorBoard's reader; `$cache/tensorboard-2.21.0/bin/tensorboard
#     --logdir runs` shows runs);
#   - a `.libtorch` symlink at the repository root, which `.cargo/config.toml` points LIBTORCH
#     at, so that a plain `cargo build` finds libtorch afterwards.
#
# Safe to run any number of times; a second run on a set-up node takes about a second.
set -euo pipefail

TORCH_VERSION=2.11.0
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MICN_CACHE:-$HOME/.cache/micn}
venv=$cache/torch-$TORCH_VERSION

say() { printf '[setup-node] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- system packages -------------------------------------------------------------------------
missing=()
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
# bindgen (used by the mpi crate) loads libclang.so itself, not libclang-cpp.
if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
    && ! compgen -G '/usr/lib/*/libclang.so*' >/dev/null; then
  missing+=(libclang-dev)
fi
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    die "missing system packages: ${missing[*]}; run as root or install them: sudo apt-get install -y ${missing[*]}"
  fi
  say "installing ${missing[*]} through apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "OpenMPI, libclang, pkg-config and fonts present"
fi

# --- libtorch (torch wheel with its CUDA runtime dependencies) --------------------------------
if [[ -f $venv/.micn-complete ]]; then
  say "torch $TORCH_VERSION found in $venv"
else
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to install torch==$TORCH_VERSION"
  say "installing torch==$TORCH_VERSION into $venv (about 4.6 GB, a few minutes)"
  mkdir -p "$cache"
  rm -rf "$venv.partial"
  python3 -m venv "$venv.partial"
  "$venv.partial/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  # A venv records its own path in its scripts; the moved one is only used for its files.
  touch "$venv/.micn-complete"
fi

# --- ONNX export of the PyTorch twin (torch.onnx needs onnx and onnxscript; onnxruntime checks
# the exported file and scores with it) ------------------------------------------------------------
ONNX_PACKAGES=(onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.31.1)
if [[ -f $venv/.micn-onnx-complete ]]; then
  say "${ONNX_PACKAGES[*]} found in $venv"
else
  say "installing ${ONNX_PACKAGES[*]} into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${ONNX_PACKAGES[@]}"
  touch "$venv/.micn-onnx-complete"
fi

# --- TensorBoard (its reader checks micn's event files in the tests; `tensorboard` views runs) --
TENSORBOARD_VERSION=2.21.0
tb_venv=$cache/tensorboard-$TENSORBOARD_VERSION
if [[ -f $tb_venv/.micn-complete ]]; then
  say "tensorboard $TENSORBOARD_VERSION found in $tb_venv"
else
  say "installing tensorboard==$TENSORBOARD_VERSION into $tb_venv"
  rm -rf "$tb_venv"
  python3 -m venv "$tb_venv"
  "$tb_venv/bin/python" -m pip install --quiet --disable-pip-version-check "tensorboard==$TENSORBOARD_VERSION"
  touch "$tb_venv/.micn-complete"
fi

torch_dir=$(ls -d "$venv"/lib/python3*/site-packages/torch 2>/dev/null | head -n 1)
[[ -n $torch_dir && -f $torch_dir/lib/libtorch_cpu.so ]] \
  || die "no libtorch_cpu.so under $venv; remove $venv and run this script again"
ln -sfn "$torch_dir" "$repo/.libtorch"
say "libtorch: $repo/.libtorch -> $torch_dir"
