"""Wall time and peak resident memory of ibau's commands on ImageNet-shape
models (issue "Real-size models").

Runs, for each model made by ``tools/make_scale_fixtures.py`` (ResNet-50 and
ViT-B/16 shapes, 1000 classes, 224x224 RGB, random weights) on its 16 images:
``inspect``, ``verify``, ``eval``, one ``sanitize`` round with each search
(``--search paper`` and the default targeted search) and ``scan``; each in
its own process, whose peak RSS is ``ru_maxrss`` of that child alone (read by
a small wrapper process that runs nothing else). Prints a Markdown table and,
with ``--json FILE``, writes the rows.

The ``sanitize`` and ``scan`` runs take ``--batch-size 8`` and, to finish in
minutes on two CPU cores, fewer steps than the defaults
(``--perturbation-steps`` / ``--steps``, printed in the table's command
column): every step costs the same memory, so the peak is that of a default
run; the seconds are not. Run from the repository root::

    .venv/bin/python tools/make_scale_fixtures.py
    IBAU_BIN=target/release/ibau .venv/bin/python tools/bench_scale.py [--only resnet50]

``IBAU_BIN`` defaults to ``target/debug/ibau``. Extra arguments after ``--``
go to every command (``-- --device cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NORM = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def measure(cmd: list[str]) -> None:
    """The wrapper: run `cmd`, then print its peak RSS (bytes) and seconds."""
    start = time.monotonic()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"rc": rc, "seconds": seconds, "peak": peak}))


def run(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", "--", *cmd],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def commands(ibau: str, model: Path, data: Path, out: Path, extra: list[str],
             search_steps: int, scan_steps: int) -> list[tuple[str, list[str]]]:
    common = ["--data", str(data), *NORM]
    train = ["--clean", str(data), *NORM, "--batch-size", "8", "--rounds", "1", "--no-scan",
             "--perturbation-steps", str(search_steps)]
    return [(label, cmd + extra) for label, cmd in [
        ("inspect", [ibau, "inspect", str(model)]),
        ("verify", [ibau, "verify", str(model), "--batch", "2"]),
        ("eval", [ibau, "eval", str(model), *common]),
        ("sanitize --search paper",
         [ibau, "sanitize", str(model), *train, "--search", "paper", "-o", str(out / "paper.onnx")]),
        ("sanitize (targeted)",
         [ibau, "sanitize", str(model), *train, "-o", str(out / "targeted.onnx")]),
        ("scan", [ibau, "scan", str(model), "--clean", str(data), *NORM, "--max-batch", "16",
                  "--steps", str(scan_steps), "--per-class", "2"]),
    ]]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":
        measure(sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("target/scale"))
    p.add_argument("--only", action="append", help="resnet50 or vit_b16 (repeatable)")
    p.add_argument("--command", action="append", help="run only these commands (by name prefix)")
    p.add_argument("--search-steps", type=int, default=2)
    p.add_argument("--scan-steps", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("extra", nargs="*")
    args = p.parse_args()
    ibau = os.environ.get("IBAU_BIN", "target/debug/ibau")
    data = args.dir / "images.npz"
    rows = []
    print("| model | file MB | command | seconds | peak RSS GB | exit |")
    print("|---|---|---|---|---|---|")
    for name in args.only or ["resnet50", "vit_b16"]:
        model = args.dir / f"{name}.onnx"
        if not model.exists():
            sys.exit(f"{model} is missing: run tools/make_scale_fixtures.py first")
        with tempfile.TemporaryDirectory() as tmp:
            for label, cmd in commands(ibau, model, data, Path(tmp), args.extra,
                                       args.search_steps, args.scan_steps):
                if args.command and not any(label.startswith(c) for c in args.command):
                    continue
                r = run(cmd)
                row = {"model": name, "file_mb": model.stat().st_size / 1e6, "command": label,
                       "argv": cmd[1:], **r}
                rows.append(row)
                print(f"| {name} | {row['file_mb']:.0f} | {label} | {r['seconds']:.1f} | "
                      f"{r['peak'] / 2**30:.2f} | {r['rc']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
