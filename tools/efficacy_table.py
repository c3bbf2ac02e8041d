"""ACC and ASR before and after ``ibau sanitize`` with its defaults, per
fixture and clean-set size (issue "Beyond one patch").

For each model of models/fixtures*.json (one row per distinct model: the
dtype/opset/exporter variants of the VGG are left out unless --all) and each
``--sizes`` entry N, runs::

    ibau sanitize MODEL --clean FASHION --clean-range 0:N -o OUT --report R \
        --test FASHION --test-range 5000:10000 [--trigger T --target X]...

with nothing else (the defaults: the scan before, the targeted search,
5 rounds), then, for the input-aware fixture (no trigger ibau can stamp), an
``ibau eval`` of the input and the output on its triggered images. Clean
fixtures (fixtures_clean.json) get the same run without a trigger: their ACC
change is the harm. Prints a Markdown table and writes every report under
--out (default /tmp/ibau-efficacy-table).

Each finished (fixture, size) appends one JSON line to --results (default
tools/results/efficacy.jsonl, committed), tagged with --tag; a run skips the
rows its tag already has, so it resumes where it stopped. ``--table`` prints
the Markdown table of a tag from that file without running anything::

    python3 tools/efficacy_table.py --sizes 100,5000 --tag T [--only 'attack_|clean_']
    python3 tools/efficacy_table.py --table --tag T

Only the standard library; ``IBAU_BIN`` defaults to target/debug/ibau.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
VARIANTS = re.compile(r"vgg_badnets_(?!legacy)|_dynamo|\.pt$")


def fixtures(all_variants: bool) -> list[dict]:
    seen, rows = set(), []
    for path in sorted((ROOT / "models").glob("fixtures*.json")):
        for r in json.loads(path.read_text()):
            file = r["file"]
            if file in seen or (not all_variants and VARIANTS.search(file)):
                continue
            seen.add(file)
            if "triggers" in r:
                pairs = [(t["trigger"], t["target"], t.get("data")) for t in r["triggers"]]
            elif r.get("trigger"):
                pairs = [(r["trigger"], r["target"], None)]
            else:
                pairs = []
            rows.append({"file": file, "pairs": pairs, "attack": r.get("attack", r.get("arch"))})
    return rows


def eval_acc(ibau: str, model: str, data: str) -> float:
    out = subprocess.run([ibau, "eval", model, "--data", data, "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["acc"]


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


HEADER = ("| model | attack | clean | ACC before | ACC after | ASR before | ASR after "
          "| rounds | unlearned | scan before | s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | {r['attack']} | {r['clean']} | {r['error']} |"
    return (f"| {r['model']} | {r['attack']} | {r['clean']} | {pct(r['acc_before'])} | "
            f"{pct(r['acc_after'])} | {' / '.join(pct(a) for a in r['asr_before']) or '-'} | "
            f"{' / '.join(pct(a) for a in r['asr_after']) or '-'} | {r['rounds']} | "
            f"{r['unlearned']} | {r['scan_before']} | {r['seconds']:.0f} |")


def read_results(path: Path, tag: str) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("tag") == tag]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,500,5000")
    p.add_argument("--only", help="regex on the file name")
    p.add_argument("--all", action="store_true", help="include the VGG variants")
    p.add_argument("--out", type=Path, default=Path("/tmp/ibau-efficacy-table"))
    p.add_argument("--results", type=Path, default=ROOT / "tools/results/efficacy.jsonl")
    p.add_argument("--tag", default="untagged", help="names this run's rows in --results")
    p.add_argument("--table", action="store_true", help="print --tag's rows, run nothing")
    p.add_argument("extra", nargs="*", help="more sanitize options (after --)")
    args = p.parse_args()
    ibau = os.environ.get("IBAU_BIN", str(ROOT / "target/debug/ibau"))
    done_rows = read_results(args.results, args.tag)
    print(HEADER)
    if args.table:
        for r in done_rows:
            print(table_row(r))
        return
    finished = {(r["file"], r["clean"]) for r in done_rows}
    args.out.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)

    def record(r: dict) -> None:
        r = {"tag": args.tag, **r}
        with args.results.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(table_row(r), flush=True)

    for row in fixtures(args.all):
        if args.only and not re.search(args.only, row["file"]):
            continue
        name = Path(row["file"]).stem
        for n in [int(s) for s in args.sizes.split(",")]:
            if (row["file"], n) in finished:
                continue
            base = {"file": row["file"], "model": name, "attack": row["attack"], "clean": n}
            out = args.out / f"{name}.{n}.onnx"
            report = args.out / f"{name}.{n}.json"
            cmd = [ibau, "sanitize", row["file"], "--clean", FASHION, "--clean-range", f"0:{n}",
                   "-o", str(out), "--report", str(report),
                   "--test", FASHION, "--test-range", "5000:10000", *args.extra]
            npz = None
            for trigger, target, data in row["pairs"]:
                if trigger is None:
                    npz = data
                    continue
                cmd += ["--trigger", trigger, "--target", str(target)]
            start = time.monotonic()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            seconds = time.monotonic() - start
            (args.out / f"{name}.{n}.stderr").write_text(done.stderr)
            if done.returncode != 0:
                last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
                record({**base, "error": f"exit {done.returncode}: {last}", "seconds": seconds})
                continue
            r = json.loads(report.read_text())
            before, after = r["before"] or {}, r["after"] or {}
            asr_b = [a["asr"] for a in before.get("attacks", [])]
            asr_a = [a["asr"] for a in after.get("attacks", [])]
            if npz:
                asr_b.append(eval_acc(ibau, row["file"], npz))
                asr_a.append(eval_acc(ibau, str(out), npz))
            scan = r.get("scan_before") or {}
            verdict = scan.get("verdict", "-")
            if scan.get("targets"):
                verdict += " " + ",".join(map(str, scan["targets"]))
            unlearned = ",".join(map(str, r.get("unlearned", []))) or "-"
            guard = r.get("guard")
            if guard:
                unlearned += f" (guard: round {guard['kept_round']} written" + (
                    f", over budget {','.join(map(str, guard['over_budget']))}"
                    if guard.get("over_budget") else "") + ")"
            record({**base, "acc_before": before.get("acc"), "acc_after": after.get("acc"),
                    "asr_before": asr_b, "asr_after": asr_a, "rounds": len(r["rounds"]),
                    "unlearned": unlearned, "scan_before": verdict, "seconds": seconds,
                    "guard": guard})


if __name__ == "__main__":
    main()
