#!/usr/bin/env bash
# The long fuzz campaign of the ONNX decoder and import (examples/fuzz_onnx.rs):
# one million seeded executions, the input of every distinct crash saved, then
# the summary (executions, exec/s, how far inputs got, each crash with its
# message, location and ibau frames).
#
#   tools/fuzz.sh                       # release build, 1 M executions, seed 1
#   tools/fuzz.sh --debug               # debug build: also catches integer overflow
#   ITERATIONS=100000 SEED=7 CRASHES=/tmp/c tools/fuzz.sh -- --no-forward
#
# Arguments after `--` go to the fuzzer (see `cargo run --example fuzz_onnx -- --help`).
# Progress goes to stderr every 50 000 executions; the whole output is also kept
# in $CRASHES/campaign.log. Exit status: the fuzzer's (0 no crash, 1 crashes,
# 2 error). A crash replays with `--start N --iterations 1` (same seed).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

ITERATIONS=${ITERATIONS:-1000000}
SEED=${SEED:-1}
CRASHES=${CRASHES:-/tmp/fuzz-crashes}
profile=(--release)
if [ "${1:-}" = "--debug" ]; then
  profile=()
  shift
fi
[ "${1:-}" = "--" ] && shift

mkdir -p "$CRASHES"
log="$CRASHES/campaign.log"
cargo build "${profile[@]}" --example fuzz_onnx >&2
status=0
cargo run "${profile[@]}" --quiet --example fuzz_onnx -- \
  --iterations "$ITERATIONS" --seed "$SEED" --save-crashes "$CRASHES" "$@" \
  > >(tee "$log") 2> >(tee -a "$log.progress" >&2) || status=$?
wait
printf '\n(summary above also in %s; progress in %s.progress; crash inputs in %s)\n' \
  "$log" "$log" "$CRASHES" >&2
exit "$status"
