# Sourced by the peer comparisons: `peer_venv PACKAGE==VERSION DEPENDENCY...` makes (once) a
# virtual environment under the micn cache for a peer trainer, reusing the torch that set-up
# installed (a .pth file) so the peer is never a dependency of micn: the dependencies from PyPI,
# then the package itself without its own (its pins would pull a second torch). Sets `peer` to
# the environment's directory.
peer_venv() {
  local package=$1
  shift
  local cache=${MICN_CACHE:-$HOME/.cache/micn}
  local torch_site
  torch_site=$(ls -d "$cache"/torch-2.11.0/lib/python3*/site-packages | head -n 1)
  peer=$cache/peer-${package/==/-}
  [[ -f $peer/.micn-complete ]] && return
  printf '[peer] installing %s into %s\n' "$package" "$peer" >&2
  rm -rf "$peer"
  python3 -m venv "$peer"
  echo "$torch_site" >"$(ls -d "$peer"/lib/python3*/site-packages)/micn-torch.pth"
  "$peer/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
  "$peer/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$package"
  touch "$peer/.micn-complete"
}
