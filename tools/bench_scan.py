"""Seconds per model of `ibau scan` on the fixtures, from N clean images.

    .venv/bin/python tools/bench_scan.py [--clean N] [--threads T] [MODEL...]

* models: every models/*.onnx and models/*.pt (or those given);
* data: the first N (default 1000) Fashion-MNIST test images;
* threads: OMP_NUM_THREADS=T and MKL_NUM_THREADS=T (libtorch sizes its
  intra-op pool from them), default 2;
* ibau: built with `cargo build --release` unless IBAU_BIN names a binary
  (e.g. target/debug/ibau; the table then says "debug").

One `ibau scan` process per model, one after the other. The seconds are the
scan's own (the report's "seconds": the two per-class searches and the
transfer check, not the import); "wall" is the whole process. Prints a
Markdown table: model, parameters, verdict, targets, statistic, threshold,
scan seconds, wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ibau_binary  # noqa: E402  (the same build rule as the round benchmark)

ROOT = Path(__file__).resolve().parent.parent
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def parameters(model: Path) -> str:
    if model.suffix != ".onnx":
        return "-"
    try:
        import numpy as np
        import onnx
    except ImportError:
        return "-"
    proto = onnx.load(str(model), load_external_data=False)
    return f"{sum(int(np.prod(t.dims)) for t in proto.graph.initializer):,}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", type=int, default=1000, help="clean images (default 1000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("models", nargs="*", type=Path)
    args = p.parse_args()
    models = args.models or sorted(
        m for m in (ROOT / "models").iterdir() if m.suffix in (".onnx", ".pt"))
    binary, kind = ibau_binary()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"ibau scan ({kind} build), {args.clean} clean images, {args.threads} threads\n")
    print("| model | parameters | verdict | targets | statistic | threshold | scan s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for model in models:
        start = time.monotonic()
        out = subprocess.run(
            [str(binary), "scan", str(model), "--clean", str(FASHION_TEST),
             "--clean-range", f"0:{args.clean}", "--device", "cpu", "--json"],
            env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        if out.returncode not in (0, 1):
            print(f"| {model.name} | - | error | - | - | - | - | {wall:.1f} |")
            print(out.stderr.strip(), file=sys.stderr)
            continue
        entry = json.loads(out.stdout)["models"][0]
        targets = ", ".join(str(t) for t in entry["targets"]) or "-"
        print(f"| {model.name} | {parameters(model)} | {entry['verdict']} | {targets} | "
              f"{entry['statistic']:.2f} | {entry['threshold']:.2f} | {entry['seconds']:.1f} | "
              f"{wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
