"""Judge `ibau scan` on the calibration zoo (tools/make_zoo.py) as TrojAI and
the Trojan Detection Challenge judge a detector: on models it was not fitted
to.

    .venv/bin/python tools/bench_zoo.py run  [--tag T] [--threads 2] [ZOO_ID...]
    .venv/bin/python tools/bench_zoo.py table [--tag T]

`run` scans every zoo model that tools/make_zoo.py has finished (its line in
tools/results/zoo_models.jsonl and its file in the cache) with the scan's
defaults (the first 1000 Fashion-MNIST test images; 0..4999 is the
defender's part of the test set, the zoo's ACC/ASR use 5000..9999), one
`ibau scan --json` process at a time, and appends one line per model to
tools/results/zoo_scan.jsonl: the tag (default: the commit ibau was built
from, with "+dirty" for a changed tree), the verdict, the statistic, each
class's score, the untargeted mask's score when there is one, the scan's own
seconds and the wall seconds. A model already scanned under the tag is
skipped, so a killed run resumes where it stopped.

`table` reads those lines for one tag and prints, per half of the zoo
(calibration, validation; the split is the manifest's, fixed by seed before
any model was trained):

* ROC AUC of the model-level statistic (the largest class score), poisoned
  (attacks that took: ASR >= 0.8 on every trigger) against clean;
* the false positive rate at 95% recall, with the threshold that gives 95%
  recall on the CALIBRATION half applied to both halves (the validation row
  is the honest one);
* the verdict of the scan as shipped (its own threshold): true positives,
  false positives;
* per attack kind, the share of poisoned models whose true target (either
  target, for two targets) is the top-scored class;
* seconds per model (the scan's own; mean and max).

IBAU_BIN picks the binary (default target/release/ibau, built if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tools" / "results" / "zoo_models.jsonl"
SCANS = ROOT / "tools" / "results" / "zoo_scan.jsonl"
FASHION_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
RECALL = 0.95


def binary() -> Path:
    b = Path(os.environ.get("IBAU_BIN", ROOT / "target" / "release" / "ibau"))
    if not b.exists():
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    return b


def default_tag() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def run(args) -> None:
    cache = args.cache
    models = {m["id"]: m for m in read_lines(MODELS) if (cache / m["file"]).exists()}
    done = {(s["id"], s["tag"]) for s in read_lines(SCANS)}
    todo = [i for i in sorted(models) if (not args.ids or i in args.ids) and (i, args.tag) not in done]
    ibau = binary()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"{len(models)} zoo models trained, {len(todo)} to scan under tag {args.tag}", flush=True)
    for i in todo:
        m = models[i]
        start = time.perf_counter()
        out = subprocess.run([str(ibau), "scan", str(cache / m["file"]), "--clean", FASHION_TEST, "--json",
                              "--device", "cpu", *args.scan_args], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if out.returncode not in (0, 1):
            print(f"  {i}: exit {out.returncode}: {out.stderr.strip()[-300:]}", flush=True)
            continue
        entry = json.loads(out.stdout)["models"][0]
        classes = entry.get("classes", [])
        line = dict(id=i, tag=args.tag, verdict=entry["verdict"], statistic=entry.get("statistic"),
                    threshold=entry.get("threshold"), targets=entry.get("targets", []),
                    scores={str(c["class"]): round(c["score"], 4) for c in classes},
                    classes=classes, untargeted=entry.get("untargeted"),
                    seconds=entry.get("seconds"), wall=round(wall, 2))
        with SCANS.open("a") as f:
            f.write(json.dumps(line) + "\n")
        truth = "clean" if m["attack"] is None else f"{m['attack']['kind']} -> {m.get('targets')}"
        print(f"  {i} {m['split']:11s} {m['arch']:12s} {truth:24s} {entry['verdict']:8s} "
              f"stat {entry.get('statistic', 0):.2f} top {top_class(line)}  {wall:.1f}s", flush=True)


def top_class(scan: dict) -> int | None:
    if not scan["scores"]:
        return None
    return int(max(scan["scores"], key=lambda c: scan["scores"][c]))


def auc(pos: list[float], neg: list[float]) -> float:
    """ROC AUC: the chance that a poisoned model outscores a clean one (ties half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def threshold_at_recall(pos: list[float], recall: float) -> float:
    """The largest threshold t such that `statistic >= t` keeps `recall` of pos."""
    s = sorted(pos, reverse=True)
    k = max(1, int(-(-recall * len(s) // 1)))  # ceil
    return s[k - 1]


def table(args) -> None:
    models = {m["id"]: m for m in read_lines(MODELS)}
    scans = {s["id"]: s for s in read_lines(SCANS) if s["tag"] == args.tag}
    rows = []
    for i, s in scans.items():
        m = models.get(i)
        if m is None:
            continue
        poisoned = m["attack"] is not None
        if poisoned and not m.get("attack_took"):
            continue  # an attack that did not take is neither clean nor a backdoor
        rows.append((m, s, poisoned))
    stat = lambda s: s["statistic"] if s["statistic"] is not None else 0.0  # noqa: E731
    cal = [stat(s) for m, s, p in rows if p and m["split"] == "calibration"]
    t95 = threshold_at_recall(cal, RECALL) if cal else float("nan")
    print(f"tag {args.tag}: {len(rows)} models scanned (attacks that did not take left out)")
    print(f"threshold for {RECALL:.0%} recall on the calibration half: {t95:.3f}\n")
    print("| half | clean | poisoned | ROC AUC | FPR at 95% recall (cal. threshold) | recall there "
          "| shipped verdict: TP | FP | target first | s/model (mean, max) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for half in ("calibration", "validation"):
        part = [(m, s, p) for m, s, p in rows if m["split"] == half]
        pos = [stat(s) for m, s, p in part if p]
        neg = [stat(s) for m, s, p in part if not p]
        fpr = sum(v >= t95 for v in neg) / max(1, len(neg))
        rec = sum(v >= t95 for v in pos) / max(1, len(pos))
        tp = sum(s["verdict"] == "backdoor" for m, s, p in part if p)
        fp = sum(s["verdict"] == "backdoor" for m, s, p in part if not p)
        targeted = [(m, s) for m, s, p in part if p and m["targets"]]
        first = sum(top_class(s) in m["targets"] for m, s in targeted)
        secs = [s["seconds"] or 0 for _, s, _ in part]
        print(f"| {half} | {len(neg)} | {len(pos)} | {auc(pos, neg):.3f} | {fpr:.1%} | {rec:.1%} "
              f"| {tp}/{len(pos)} | {fp}/{len(neg)} | {first}/{len(targeted)} "
              f"| {sum(secs) / max(1, len(secs)):.1f}, {max(secs, default=0):.1f} |")
    print("\nPer attack kind (both halves; validation in brackets):\n")
    print("| kind | models | flagged | target first |")
    print("|---|---|---|---|")
    kinds: dict[str, list] = {}
    for m, s, p in rows:
        kinds.setdefault(m["attack"]["kind"] if p else "clean", []).append((m, s))
    for kind, ms in sorted(kinds.items()):
        val = [(m, s) for m, s in ms if m["split"] == "validation"]
        flag = lambda v: sum(s["verdict"] == "backdoor" for m, s in v)  # noqa: E731
        first = lambda v: sum(top_class(s) in m["targets"] for m, s in v if m["targets"])  # noqa: E731
        has_t = lambda v: sum(1 for m, _ in v if m["targets"])  # noqa: E731
        print(f"| {kind} | {len(ms)} [{len(val)}] | {flag(ms)} [{flag(val)}] | "
              + (f"{first(ms)}/{has_t(ms)} [{first(val)}/{has_t(val)}] |" if kind != "clean" else "- |"))
    if args.verbose:
        print("\n| id | half | arch | truth | ASR | verdict | statistic | top | untargeted |")
        print("|---|---|---|---|---|---|---|---|---|")
        for m, s, p in sorted(rows, key=lambda r: r[0]["id"]):
            u = s.get("untargeted")
            truth = m["attack"]["kind"] + f" {m['targets']}" if p else "clean"
            print(f"| {m['id']} | {m['split'][:3]} | {m['arch']} | {truth} | {m['asr']} | {s['verdict']} "
                  f"| {stat(s):.2f} | {top_class(s)} | {u['score']:.2f} |" if u else
                  f"| {m['id']} | {m['split'][:3]} | {m['arch']} | {truth} | {m['asr']} | {s['verdict']} "
                  f"| {stat(s):.2f} | {top_class(s)} | - |")


# --------------------------------------------------------------------------
# Fitting a rule on the calibration half
# --------------------------------------------------------------------------

def median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else 0.0


def class_features(scan: dict) -> dict[int, list[float]]:
    """Per class: log(median radius / radius), log(median mask / mask), the
    same two over 1.4826 MAD of the log budgets (Neural Cleanse's anomaly
    index), the larger transfer of the two triggers to held-back images,
    and the larger confidence."""
    import math
    cs = scan["classes"]
    if not cs:
        return {}
    out = {}
    lr = [math.log(max(c["radius"], 1e-9)) for c in cs]
    lm = [math.log(max(c["mask"], 1e-9)) for c in cs]
    mr, mm = median(lr), median(lm)
    madr = 1.4826 * median([abs(v - mr) for v in lr]) + 1e-6
    madm = 1.4826 * median([abs(v - mm) for v in lm]) + 1e-6
    for c, a, b in zip(cs, lr, lm):
        out[c["class"]] = [mr - a, mm - b, (mr - a) / madr, (mm - b) / madm,
                           max(c["radius_transfer"], c["mask_transfer"]),
                           max(c["radius_confidence"], c["mask_confidence"]),
                           max(c["radius_worst_source"], c["mask_worst_source"])]
    return out


FEATURES = ["log_ratio_radius", "log_ratio_mask", "anomaly_radius", "anomaly_mask", "transfer", "confidence",
            "worst_source"]


def logistic(x, y, l2=0.1, steps=4000, lr=0.1):
    """L2-regularised logistic regression by gradient descent; weights then bias."""
    import numpy as np
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    w = np.zeros(x.shape[1] + 1)
    xb = np.hstack([x, np.ones((len(x), 1))])
    pos = max(1.0, y.sum())
    weight = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * max(1.0, len(y) - pos)))  # balanced
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xb @ w))
        g = xb.T @ (weight * (p - y)) / len(y)
        g[:-1] += l2 * w[:-1]
        w -= lr * g
    return w


def fit(args) -> None:
    import numpy as np
    models = {m["id"]: m for m in read_lines(MODELS)}
    scans = {s["id"]: s for s in read_lines(SCANS) if s["tag"] == args.tag}
    rows = []
    for i, s in scans.items():
        m = models.get(i)
        if m is None or (m["attack"] is not None and not m.get("attack_took")):
            continue
        rows.append((m, s, class_features(s)))
    statistics = {
        "cheap score (shipped rule)": lambda f, s: max((c["score"] for c in s["classes"]), default=0.0),
        "geometric mean of log ratios": lambda f, s: max((v[0] + v[1]) / 2 for v in f.values()),
        "anomaly index (MAD)": lambda f, s: max((v[2] + v[3]) / 2 for v in f.values()),
    }
    # A per-class logistic model over the features, fitted on the calibration
    # half's classes: a true target against every other class.
    cal = [(m, f) for m, s, f in rows if m["split"] == "calibration"]
    x, y = [], []
    for m, f in cal:
        targets = set(m["targets"]) if m["attack"] is not None else set()
        for c, v in f.items():
            x.append(v)
            y.append(1.0 if c in targets else 0.0)
    fitted = {}
    if x:
        for name, cols in [("logistic: ratios + worst source", [0, 1, 6]),
                           ("logistic: ratios + transfer", [0, 1, 4]),
                           ("logistic: anomaly + transfer", [2, 3, 4]),
                           ("logistic: all", list(range(len(FEATURES))))]:
            w = logistic([[v[k] for k in cols] for v in x], y)
            fitted[name] = dict(features=[FEATURES[k] for k in cols], weights=[round(float(v), 4) for v in w])
            statistics[name] = (lambda w, cols: lambda f, s: max(
                float(np.dot(w[:-1], [v[k] for k in cols]) + w[-1]) for v in f.values()))(w, cols)
    print(f"tag {args.tag}; fitted on the calibration half: {json.dumps(fitted)}\n")
    print("| statistic | half | clean | poisoned | ROC AUC | FPR at 95% recall (own) | cal. threshold: TPR | FPR "
          "| target first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, stat in statistics.items():
        cal_pos = [stat(f, s) for m, s, f in rows if m["split"] == "calibration" and m["attack"] is not None and f]
        t = threshold_at_recall(cal_pos, RECALL) if cal_pos else float("nan")
        for half in ("calibration", "validation"):
            part = [(m, s, f) for m, s, f in rows if m["split"] == half and f]
            pos = [stat(f, s) for m, s, f in part if m["attack"] is not None]
            neg = [stat(f, s) for m, s, f in part if m["attack"] is None]
            own = threshold_at_recall(pos, RECALL) if pos else float("nan")
            fpr_own = sum(v >= own for v in neg) / max(1, len(neg))
            tpr = sum(v >= t for v in pos) / max(1, len(pos))
            fpr = sum(v >= t for v in neg) / max(1, len(neg))
            first = [top_of(stat, f, s) in m["targets"] for m, s, f in part if m["attack"] is not None and m["targets"]]
            print(f"| {name} | {half} | {len(neg)} | {len(pos)} | {auc(pos, neg):.3f} | {fpr_own:.1%} | {tpr:.1%} "
                  f"| {fpr:.1%} | {sum(first)}/{len(first)} |")


def youden(pos: list[float], neg: list[float]) -> float:
    """The threshold t (a midpoint between two observed values) that
    maximises TPR - FPR of `statistic > t`; ties go to the larger t."""
    values = sorted(set(pos + neg))
    cands = [(a + b) / 2 for a, b in zip(values, values[1:])] or values
    def j(t):
        return sum(v > t for v in pos) / max(1, len(pos)) - sum(v > t for v in neg) / max(1, len(neg))
    return max(cands, key=lambda t: (round(j(t), 9), t))


def rule(args) -> None:
    """The verdict as two thresholds fitted on the calibration half: the
    largest class score (Youden's J over the models with a target against
    the clean ones) and the untargeted mask's score (the geometric middle of
    the largest clean and the smallest all-to-all value); reported on both
    halves."""
    import math
    models = {m["id"]: m for m in read_lines(MODELS)}
    scans = {s["id"]: s for s in read_lines(SCANS) if s["tag"] == args.tag}
    rows = [(models[i], s) for i, s in scans.items() if i in models
            and (models[i]["attack"] is None or models[i].get("attack_took"))]
    S = lambda s: max((c["score"] for c in s["classes"]), default=0.0)  # noqa: E731
    U = lambda s: (s.get("untargeted") or {}).get("score", 0.0)  # noqa: E731
    cal = [(m, s) for m, s in rows if m["split"] == "calibration"]
    clean = [s for m, s in cal if m["attack"] is None]
    targeted = [s for m, s in cal if m["attack"] is not None and m["targets"]]
    all2all = [s for m, s in cal if m["attack"] is not None and not m["targets"]]
    t_s = youden([S(s) for s in targeted], [S(s) for s in clean])
    t_u = math.sqrt(max(U(s) for s in clean) * min(U(s) for s in all2all)) if all2all and clean else float("inf")
    if args.thresholds:
        print(f"(fitted now: {t_s:.3f} and {t_u:.3f}; judging the given ones)")
        t_s, t_u = args.thresholds
    print(f"tag {args.tag}: fitted on the calibration half ({len(clean)} clean, {len(targeted)} with targets, "
          f"{len(all2all)} all-to-all): class-score threshold {t_s:.3f}, untargeted threshold {t_u:.3f}\n")
    print("| half | clean | poisoned | ROC AUC of max(S/Ts, U/Tu) | FPR at 95% recall (own) "
          "| verdict TPR | verdict FPR | target first | s/model |")
    print("|---|---|---|---|---|---|---|---|---|")
    comb = lambda s: max(S(s) / t_s, U(s) / t_u)  # noqa: E731
    for half in ("calibration", "validation"):
        part = [(m, s) for m, s in rows if m["split"] == half]
        pos = [comb(s) for m, s in part if m["attack"] is not None]
        neg = [comb(s) for m, s in part if m["attack"] is None]
        own = threshold_at_recall(pos, RECALL) if pos else float("nan")
        tpr = sum(v > 1 for v in pos) / max(1, len(pos))
        fpr = sum(v > 1 for v in neg) / max(1, len(neg))
        first = [top_class(s) in m["targets"] for m, s in part if m["attack"] is not None and m["targets"]]
        secs = [s["seconds"] or 0 for _, s in part]
        print(f"| {half} | {len(neg)} | {len(pos)} | {auc(pos, neg):.3f} | {sum(v >= own for v in neg) / max(1, len(neg)):.1%} "
              f"| {tpr:.1%} | {fpr:.1%} | {sum(first)}/{len(first)} | {sum(secs) / max(1, len(secs)):.1f} |")
    print("\nPer attack kind, validation half (flagged / models, target first):\n")
    kinds: dict[str, list] = {}
    for m, s in rows:
        if m["split"] == "validation":
            kinds.setdefault(m["attack"]["kind"] if m["attack"] else "clean", []).append((m, s))
    for kind, ms in sorted(kinds.items()):
        flagged = sum(comb(s) > 1 for _, s in ms)
        first = sum(top_class(s) in m["targets"] for m, s in ms if m["targets"])
        print(f"- {kind}: {flagged}/{len(ms)} flagged" + (f", target first {first}/{sum(1 for m, _ in ms if m['targets'])}"
                                                         if kind not in ("clean", "all2all") else ""))


def top_of(stat, f, s) -> int:
    """The class a statistic ranks first (its value on that class alone)."""
    return max(f, key=lambda c: stat({c: f[c]}, dict(s, classes=[x for x in s["classes"] if x["class"] == c])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("ids", nargs="*")
    r.add_argument("--scan-args", nargs=argparse.REMAINDER, default=[],
                   help="passed to `ibau scan` (last option)")
    t = sub.add_parser("table")
    t.add_argument("-v", "--verbose", action="store_true", help="one row per model too")
    fi = sub.add_parser("fit", help="fit candidate rules on the calibration half, report both halves")
    ru = sub.add_parser("rule", help="fit the two thresholds of the verdict on the calibration half")
    ru.add_argument("--thresholds", type=float, nargs=2, metavar=("CLASS", "UNTARGETED"),
                    help="judge these thresholds (the shipped ones) instead of the ones fitted now")
    for q in (r, t, fi, ru):
        q.add_argument("--tag", default=None)
        q.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ibau" / "zoo")
    args = p.parse_args()
    args.tag = args.tag or default_tag()
    dict(run=run, table=table, fit=fit, rule=rule)[args.cmd](args)


if __name__ == "__main__":
    main()
