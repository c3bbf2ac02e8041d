"""Seconds per I-BAU round: our PyTorch reference (tools/ibau_reference.py)
against `ibau sanitize`, on the same fixture, data, thread count and schedule.

    .venv/bin/python tools/bench.py [--clean N] [--rounds R] [--threads T]

* model: models/vgg_badnets_legacy.onnx for ibau; the reference loads the same
  weights (BatchNorm folded into the convolutions) into the fixtures' VGG;
* data: the first N (default 1000) Fashion-MNIST test images, B = 100;
* threads: both processes run with OMP_NUM_THREADS=T and MKL_NUM_THREADS=T
  (libtorch sizes its intra-op pool from them; the reference also calls
  torch.set_num_threads(T)); default 2;
* ibau: built with `cargo build --release` unless IBAU_BIN names a binary
  (e.g. target/debug/ibau for a quick run; the table then says "debug").

ibau's seconds come from its --report JSON ("rounds"[i]."seconds"), the
reference's from its own per-round timer; both cover the perturbation search
and the unlearning pass, not the import, evaluation or export. The two
processes run one after the other, never at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def ibau_binary() -> tuple[Path, str]:
    given = os.environ.get("IBAU_BIN")
    if given:
        path = Path(given).resolve()
        kind = "debug" if "/debug/" in str(path) else ("release" if "/release/" in str(path) else "given")
        return path, kind
    print("building ibau (cargo build --release; ~15 min from scratch on 2 cores)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--bin", "ibau"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "release" / "ibau", "release"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=1000, help="clean samples (first N test images)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(ROOT / "models" / "vgg_badnets_legacy.onnx"))
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    if not FASHION_TEST.exists():
        sys.exit(f"{FASHION_TEST} is missing: run tools/setup.sh")

    binary, build = ibau_binary()
    if not binary.exists():
        sys.exit(f"ibau binary {binary} does not exist")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    # The reference.
    ref = subprocess.run(
        [args.python, str(ROOT / "tools" / "ibau_reference.py"), "bench", "--clean", str(args.clean),
         "--rounds", str(args.rounds), "--threads", str(args.threads), "--model", args.model],
        env=env, cwd=ROOT, capture_output=True, text=True)
    if ref.returncode != 0:
        sys.exit(f"reference failed:\n{ref.stdout}\n{ref.stderr}")
    ref_rounds = [r for r in map(json.loads, ref.stdout.splitlines()) if "round" in r]
    ref_threads = [r for r in map(json.loads, ref.stdout.splitlines()) if r.get("summary")][0]["threads"]

    # ibau.
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [str(binary), "sanitize", args.model, "--clean", str(FASHION_TEST),
               "--clean-range", f"0:{args.clean}", "-o", str(Path(tmp) / "cleaned.onnx"),
               "--rounds", str(args.rounds), "--batch-size", "100", "--device", "cpu",
               "--search", "paper",  # the reference implements the paper's search
               "--report", str(report)]
        run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"ibau failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr}")
        ours = json.loads(report.read_text())["rounds"]

    print(f"I-BAU, {Path(args.model).name}, {args.clean} clean samples (B=100, "
          f"{(args.clean + 99) // 100} batches), {args.rounds} round(s), "
          f"{args.threads} thread(s) (reference torch.get_num_threads()={ref_threads}); "
          f"ibau binary: {build} ({binary})")
    print(f"{'round':>5}  {'reference s':>11}  {'ibau s':>9}  {'ibau/ref':>8}  "
          f"{'ref |delta|':>11}  {'ibau |delta|':>12}")
    for r, o in zip(ref_rounds, ours):
        print(f"{r['round']:>5}  {r['seconds']:>11.2f}  {o['seconds']:>9.2f}  "
              f"{o['seconds'] / r['seconds']:>8.2f}  {r['perturbation_norm']:>11.4f}  "
              f"{o['perturbation_norm']:>12.4f}")
    ref_mean = sum(r["seconds"] for r in ref_rounds) / len(ref_rounds)
    our_mean = sum(o["seconds"] for o in ours) / len(ours)
    print(f"{'mean':>5}  {ref_mean:>11.2f}  {our_mean:>9.2f}  {our_mean / ref_mean:>8.2f}")


if __name__ == "__main__":
    main()
