#!/usr/bin/env bash
# Make the Keras 3 / TensorFlow fixtures (models/keras_*.onnx and
# models/fixtures_keras.json) with tools/make_keras_fixtures.py.
#
# Not part of tools/setup.sh: the tests use the checked-in files, and this
# script is only needed to regenerate them. It creates (once; re-running is
# cheap) its own Python virtual environment with pinned versions in the same
# per-user cache folder as setup.sh, named after those versions, and then runs
# the Python script with its arguments (default: --out models).
#
#   tools/make_keras_fixtures.sh                # writes models/
#   tools/make_keras_fixtures.sh --out /tmp/kf  # elsewhere
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

TF_VERSION=2.21.0       # tensorflow-cpu: no CUDA libraries, same graphs
KERAS_VERSION=3.15.1
TF2ONNX_VERSION=1.17.0
ONNX_VERSION=1.23.2
ORT_VERSION=1.32.0
NUMPY_VERSION=2.4.6
PY=${PYTHON:-python3}
py_tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}.{sys.version_info[1]}")')
cache=${IBAU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ibau}
VENV="$cache/venv-keras-tf$TF_VERSION-keras$KERAS_VERSION-tf2onnx$TF2ONNX_VERSION-onnx$ONNX_VERSION-ort$ORT_VERSION-$py_tag"

log() { printf '[make_keras_fixtures] %s\n' "$*" >&2; }

[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || {
  log "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist (tools/setup.sh does)"
  exit 2
}

if [ ! -f "$VENV/.complete" ]; then
  log "creating $VENV (tensorflow-cpu $TF_VERSION, keras $KERAS_VERSION, tf2onnx $TF2ONNX_VERSION; about 1.7 GB)"
  rm -rf "$VENV"
  mkdir -p "$cache"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "tensorflow-cpu==$TF_VERSION" "keras==$KERAS_VERSION" "tf2onnx==$TF2ONNX_VERSION" \
    "onnx==$ONNX_VERSION" "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION"
  touch "$VENV/.complete"
fi

if [ $# -eq 0 ]; then
  set -- --out models
fi
# Quiet TensorFlow's C++ start-up chatter; keep warnings and errors.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
exec "$VENV/bin/python" tools/make_keras_fixtures.py "$@"
