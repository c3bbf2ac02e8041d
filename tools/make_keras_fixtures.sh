#!/usr/bin/env bash
# Make the Keras 3 / TensorFlow fixtures (models/keras_*.onnx and
# models/fixtures_keras.json) with tools/make_keras_fixtures.py.
#
# Not part of tools/setup.sh: the tests use the checked-in files, and this
# script is only needed to regenerate them. It creates (once; re-running is
# cheap) its own Python virtual environment with pinned versions in the same
# per-user cache folder as setup.sh, named after those versions (see
# tools/fixture_venv.sh), and then runs the Python script with its arguments
# (default: --out models).
#
#   tools/make_keras_fixtures.sh                # writes models/
#   tools/make_keras_fixtures.sh --out /tmp/kf  # elsewhere
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/fixture_venv.sh" make_keras_fixtures

TF_VERSION=2.21.0       # tensorflow-cpu: no CUDA libraries, same graphs
KERAS_VERSION=3.15.1
TF2ONNX_VERSION=1.17.0
ONNX_VERSION=1.23.2
ORT_VERSION=1.32.0
NUMPY_VERSION=2.4.6
VENV=$(fixture_venv_path "keras-tf$TF_VERSION-keras$KERAS_VERSION-tf2onnx$TF2ONNX_VERSION-onnx$ONNX_VERSION-ort$ORT_VERSION")

fixture_venv "$VENV" "tensorflow-cpu $TF_VERSION, keras $KERAS_VERSION, tf2onnx $TF2ONNX_VERSION; about 1.7 GB" \
  "tensorflow-cpu==$TF_VERSION" "keras==$KERAS_VERSION" "tf2onnx==$TF2ONNX_VERSION" \
  "onnx==$ONNX_VERSION" "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION"

if [ $# -eq 0 ]; then
  set -- --out models
fi
# Quiet TensorFlow's C++ start-up chatter; keep warnings and errors.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
exec "$VENV/bin/python" tools/make_keras_fixtures.py "$@"
