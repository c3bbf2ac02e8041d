#!/usr/bin/env bash
# Idempotent set-up for ibau on a fresh Debian machine:
#   - Debian packages: Fashion-MNIST and the ONNX backend test data;
#   - a Python virtual environment with torch 2.11.0 (libtorch for tch, and the
#     PyTorch side of fixtures and reference tests) and onnxruntime 1.32.0 (loaded
#     at run time by ort), kept in a per-user cache folder named after its versions
#     and linked from the checkout as .venv;
#   - nothing else: .cargo/config.toml (checked in) points cargo at .venv, so
#     plain `cargo build`, `cargo test` and `cargo run` work afterwards.
# Re-running it is cheap: each step checks whether it is already done.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

TORCH_VERSION=2.11.0
ORT_VERSION=1.32.0
ONNX_VERSION=1.23.2
ONNXSCRIPT_VERSION=0.7.2
JSONSCHEMA_VERSION=4.26.0
PY=${PYTHON:-python3}
py_tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}.{sys.version_info[1]}")')
cache=${IBAU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ibau}
venv="$cache/venv-torch$TORCH_VERSION-ort$ORT_VERSION-onnx$ONNX_VERSION-$py_tag"

log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
need_pkgs=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_pkgs+=(dataset-fashion-mnist)
[ -d /usr/share/libonnx-testdata/data/node ] || need_pkgs+=(libonnx-testdata)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing Debian packages: ${need_pkgs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- Python virtual environment -------------------------------------------
# The full torch wheel (with its CUDA libraries) is used on every machine: the
# same environment then serves CPU and CUDA, and libtorch_cpu.so's hard
# dependency on libcudart/libcupti is met without hand-picking packages.
if [ ! -f "$venv/.complete" ]; then
  log "creating $venv (torch $TORCH_VERSION, onnxruntime $ORT_VERSION; about 5 GB)"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "torch==$TORCH_VERSION" "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" \
    "onnxscript==$ONNXSCRIPT_VERSION" numpy
  touch "$venv/.complete"
fi
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi

# jsonschema for the test that validates `scan`'s SARIF output against the
# SARIF 2.1.0 schema; added after the fact, so checked on its own rather than
# folded into the environment's name.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('jsonschema') != '$JSONSCHEMA_VERSION')" 2>/dev/null; then
  log "installing jsonschema $JSONSCHEMA_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "jsonschema==$JSONSCHEMA_VERSION"
fi

# Sanity: the two shared libraries the build and the binary need.
site=$(echo .venv/lib/python3*/site-packages)
[ -f "$site/torch/lib/libtorch_cpu.so" ] || { log "libtorch not found under $site/torch"; exit 2; }
ls "$site"/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1 || { log "libonnxruntime not found under $site/onnxruntime/capi"; exit 2; }
log "ready: .venv -> $venv"
