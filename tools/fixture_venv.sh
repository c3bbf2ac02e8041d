# Shared by the fixture scripts that need a Python virtual environment of their
# own (tools/make_keras_fixtures.sh, tools/make_jax_fixtures.sh); sourced, not run:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/fixture_venv.sh" make_foo_fixtures
#   venv=$(fixture_venv_path "foo1.0-bar2.0")   # $cache/venv-foo1.0-bar2.0-py3.11
#   fixture_venv "$venv" "foo 1.0, bar 2.0" "foo==1.0" "bar==2.0"
#
# On sourcing it moves to the repository root, sets PY (${PYTHON:-python3}) and
# cache (the per-user cache folder tools/setup.sh uses too), defines log (its
# messages tagged with the first argument), and stops with status 2 unless the
# Debian package dataset-fashion-mnist is installed. Each script keeps its pinned
# versions; the venv's name carries them, so a new pin makes a new venv.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

fixture_tag=${1:?usage: source fixture_venv.sh SCRIPT_NAME}
PY=${PYTHON:-python3}
cache=${IBAU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ibau}

log() { printf '[%s] %s\n' "$fixture_tag" "$*" >&2; }

for f in train-images-idx3-ubyte.gz t10k-images-idx3-ubyte.gz; do
  [ -f "/usr/share/datasets/fashion-mnist/$f" ] || {
    log "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist (tools/setup.sh does)"
    exit 2
  }
done

# The venv path for a name made of the pinned versions, with the Python tag.
fixture_venv_path() {
  local py_tag
  py_tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}.{sys.version_info[1]}")')
  printf '%s/venv-%s-%s\n' "$cache" "$1" "$py_tag"
}

# fixture_venv VENV DESCRIPTION PIP_REQUIREMENT...: create VENV with the
# requirements unless "$VENV/.complete" says an earlier run finished it.
fixture_venv() {
  local venv=$1 what=$2
  shift 2
  [ -f "$venv/.complete" ] && return 0
  log "creating $venv ($what)"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@"
  touch "$venv/.complete"
}
