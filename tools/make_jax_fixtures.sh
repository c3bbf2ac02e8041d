#!/usr/bin/env bash
# Make the JAX / Flax (nnx) fixtures: models/jax_cnn.onnx, models/jax_mlp.onnx and
# models/fixtures_jax.json, exported with jax2onnx (opset 23).
#
# Not part of tools/setup.sh nor of the tests (they use the checked-in files): this
# script builds its own Python virtual environment with pinned JAX, Flax, optax,
# jax2onnx, onnx and onnxruntime in the per-user cache folder (named after the
# versions; skipped when "$venv/.complete" exists; see tools/fixture_venv.sh), then
# runs tools/make_jax_fixtures.py. Arguments are passed on to it (default: --out models).
#
#   tools/make_jax_fixtures.sh                 # writes models/
#   tools/make_jax_fixtures.sh --out /tmp/x    # elsewhere
#
# Needs the Debian package dataset-fashion-mnist (tools/setup.sh installs it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/fixture_venv.sh" make_jax_fixtures

JAX_VERSION=0.10.2
FLAX_VERSION=0.12.8
OPTAX_VERSION=0.2.8
JAX2ONNX_VERSION=0.17.1
ONNX_VERSION=1.23.2
ORT_VERSION=1.32.0
NUMPY_VERSION=2.4.6
venv=$(fixture_venv_path "jax$JAX_VERSION-flax$FLAX_VERSION-jax2onnx$JAX2ONNX_VERSION-ort$ORT_VERSION")

fixture_venv "$venv" "jax $JAX_VERSION, flax $FLAX_VERSION, jax2onnx $JAX2ONNX_VERSION" \
  "jax[cpu]==$JAX_VERSION" "jaxlib==$JAX_VERSION" "flax==$FLAX_VERSION" \
  "optax==$OPTAX_VERSION" "jax2onnx==$JAX2ONNX_VERSION" "onnx==$ONNX_VERSION" \
  "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION"

# CPU only, one XLA thread: the machines this runs on have two shared cores.
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ $# -eq 0 ]; then
  set -- --out models
fi
exec "$venv/bin/python" tools/make_jax_fixtures.py "$@"
