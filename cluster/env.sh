# Sourced by the project's scripts: make cargo reachable and let OpenMPI run as root on the
# single-user machines this project is developed on (harmless for other users).
# shellcheck shell=bash
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
export PATH
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
