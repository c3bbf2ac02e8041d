"""Sanitize every fixture with ibau and tabulate the result (issue "Any framework").

For each record of models/fixtures*.json (or those whose file matches --only)
that has a trigger (the clean models of fixtures_clean.json have none and are
skipped):

1. ``ibau verify --json`` on the fixture (max abs difference to ONNX Runtime
   and tract, or why a runtime was skipped);
2. ``ibau sanitize`` with the defaults on Fashion-MNIST test images
   0..4999 as the clean set, ACC/ASR measured on 5000..9999 with the
   fixture's trigger and target, up to ``--rounds`` rounds, stopping after the
   first round with ASR below ``--stop-below-asr``; no layout flag;
3. ``ibau verify --json`` on the written file.

Prints a Markdown table (framework, exporter, opset, trainable share, ACC/ASR
before and after, rounds, the class the targeted search unlearned next to the
fixture's target, seconds per round, verify differences) and writes
every report to ``--out`` (default /tmp/ibau-efficacy). Only the standard
library is needed::

    python3 tools/efficacy.py                       # every fixture
    python3 tools/efficacy.py --only 'jax|keras'    # a subset
    IBAU_BIN=target/release/ibau python3 tools/efficacy.py

TorchScript fixtures (``.pt``) are sanitized too; verify is skipped for them
(it needs an ONNX file to compare with).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def fixtures() -> list[dict]:
    records = []
    for path in sorted((ROOT / "models").glob("fixtures*.json")):
        for record in json.loads(path.read_text()):
            if "trigger" not in record:  # fixtures_clean.json: clean models, no backdoor to remove
                continue
            record.setdefault("framework", "PyTorch 2.11.0")
            records.append(record)
    return records


def verify(binary: str, model: Path) -> str:
    out = subprocess.run([binary, "verify", "--json", str(model)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode == 2:
        return "error: " + out.stderr.strip()
    report = json.loads(out.stdout)
    parts = []
    for o in report["outputs"]:
        d = o["max_abs_diff"]
        tract = "skipped" if d["tract"] is None else f"{d['tract']:.1e}"
        parts.append(f"ort {d['ort']:.1e} / tract {tract}")
    status = "" if report["passed"] else " FAILED"
    return "; ".join(parts) + status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="regular expression on the fixture's file name")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stop-below-asr", type=float, default=0.2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--search", default=None, help="passed on as sanitize --search (default: sanitize's)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ibau-efficacy"))
    args = parser.parse_args()

    binary = os.environ.get("IBAU_BIN", str(ROOT / "target/debug/ibau"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fx in fixtures():
        if args.only and not re.search(args.only, fx["file"]):
            continue
        model = ROOT / fx["file"]
        suffix = model.suffix
        output = args.out / (model.stem + "_sanitized" + suffix)
        report_path = args.out / (model.stem + "_report.json")
        before_verify = verify(binary, model) if suffix == ".onnx" else "-"
        cmd = [
            binary, "sanitize", str(model),
            "--clean", FASHION, "--clean-range", "0:5000",
            "--test", FASHION, "--test-range", "5000:10000",
            "--trigger", fx["trigger"], "--target", str(fx["target"]),
            "--rounds", str(args.rounds), "--stop-below-asr", str(args.stop_below_asr),
            "--seed", "0", "--device", args.device,
            "-o", str(output), "--report", str(report_path),
        ]
        if args.search:
            cmd += ["--search", args.search]
        print(f"[efficacy] {fx['file']}", file=sys.stderr, flush=True)
        start = time.time()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        (args.out / (model.stem + "_sanitize.log")).write_text(run.stderr)
        if run.returncode != 0:
            rows.append((fx, None, before_verify, f"sanitize exit {run.returncode}: {run.stderr.strip()[-300:]}"))
            continue
        report = json.loads(report_path.read_text())
        after_verify = verify(binary, output) if suffix == ".onnx" else "-"
        rows.append((fx, report, before_verify, after_verify))
        print(f"[efficacy] {fx['file']}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)

    print("| file | framework | exporter | opset | trainable | ACC before → after | ASR before → after | rounds | unlearned class (target) | s/round | verify before | verify after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for fx, report, vb, va in rows:
        if report is None:
            print(f"| {fx['file']} | {fx['framework']} | {fx['exporter']} | {fx.get('opset')} | | | | | | | {vb} | {va} |")
            continue
        b, a = report["before"], report["after"]
        rounds = report["rounds"]
        per_round = sum(r["seconds"] for r in rounds) / max(len(rounds), 1)
        asr_path = " / ".join(f"{100 * r['asr']:.1f}" for r in rounds)
        first = (rounds[0].get("targeted") or {}) if rounds else {}
        unlearned = (
            f"{first['class']} ({fx['target']}); radius {first['radius']:.2f} vs median {first['median_radius']:.2f}"
            if first else f"paper search ({fx['target']})"
        )
        print(
            f"| {Path(fx['file']).name} | {fx['framework']} | {fx['exporter']} | {fx.get('opset') or '-'} "
            f"| {100 * report['trainable']['share']:.0f}% ({report['trainable']['tensors']}) "
            f"| {100 * b['acc']:.2f} → {100 * a['acc']:.2f} "
            f"| {100 * b['asr']:.2f} → {100 * a['asr']:.2f} ({asr_path}) "
            f"| {len(rounds)} | {unlearned} | {per_round:.0f} | {vb} | {va} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
