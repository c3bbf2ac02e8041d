"""Train the calibration zoo: small clean and poisoned Fashion-MNIST models on
which the scan's rule is fitted (calibration half) and judged (validation
half), as TrojAI and the Trojan Detection Challenge judge a detector.

    .venv/bin/python tools/make_zoo.py                  # train what is missing
    .venv/bin/python tools/make_zoo.py --shard 1/2      # every other model
    .venv/bin/python tools/make_zoo.py --only z007      # one model
    .venv/bin/python tools/make_zoo.py --list           # the manifest, as a table

What it makes:

* ``tools/zoo_manifest.json`` (committed): one entry per model, drawn from
  ``MASTER_SEED`` by ``--write-manifest`` and then fixed: id, seed, split,
  architecture, epochs, training-set size and the attack (kind, trigger
  parameters, target(s), poison rate). The split is decided by the seed's
  parity (even: calibration, odd: validation) when the manifest is drawn,
  before any model exists or any score is seen. Entries come in pairs of the
  same architecture and attack kind with different seeds and trigger draws,
  so both halves hold the same mix.
* the models, as ONNX (``torch.onnx.export``, legacy exporter, opset 17,
  input ``input`` [batch,1,28,28] raw pixels in [0,1], output ``logits``),
  under ``--cache`` (default ``~/.cache/ibau/zoo``), never in the repository;
  poisoned models' trigger files (``.npy``) beside them;
* ``tools/results/zoo_models.jsonl`` (committed): one line per finished
  model: its entry plus ACC and ASR (per trigger) measured by onnxruntime on
  test images 5000..9999 (0..4999 are the defender's clean set), the ONNX
  file's sha256, training seconds. A model whose attack did not take (ASR
  under 0.8) is kept and marked ``"attack_took": false``; the benchmark
  leaves it out of the poisoned set.

Resumable: a model whose ONNX file is in the cache and whose line is in the
results file is skipped; a missing file is retrained (seeded, one thread,
deterministic algorithms: the same bytes again). Each model is a minute or
two on one core (subset of 12,000 training images, 3 to 8 epochs).

Architecture families (``ARCHS``): ``compact_cnn`` (conv-BN-ReLU-pool, the
attack fixtures' family), ``small_resnet`` (the blend fixture's family,
narrower), and three that no fixture has: ``mlp`` (784-256-128-10),
``lenet`` (LeNet-5: conv5x5-tanh-avgpool, no BatchNorm) and ``dwsep`` (a
depthwise-separable stack with ReLU6 and global average pooling, no SE).

Attack kinds: every kind ``make_attack_fixtures.py`` knows (all-to-all, two
triggers to two targets, WaNet, SIG, low-frequency, input-aware) plus BadNets
patches and blends at drawn positions, sizes, values, patterns, opacities,
targets and poison rates.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data as fd  # noqa: E402
import make_attack_fixtures as maf  # noqa: E402
import make_fixtures as mf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tools" / "zoo_manifest.json"
RESULTS = ROOT / "tools" / "results" / "zoo_models.jsonl"
MASTER_SEED = 20261207
ARCHS = ["compact_cnn", "small_resnet", "mlp", "lenet", "dwsep"]
NUM = fd.NUM_CLASSES
TOOK = 0.8  # an attack "took" when every trigger's ASR reaches this


# --------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                 nn.Linear(128, NUM))

    def forward(self, x):
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5: conv5x5(pad 2) 6-tanh-avgpool, conv5x5 16-tanh-avgpool, 120, 84, 10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(),
                                        nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, NUM))

    def forward(self, x):
        return self.classifier(self.features(x))


class DWSep(nn.Module):
    """Stem conv3x3 16-BN-ReLU6; depthwise-separable blocks 16->32, 32->64 s2,
    64->64, 64->128 s2 (dw3x3-BN-ReLU6, pw1x1-BN-ReLU6); GAP; Linear(128, 10)."""

    def __init__(self):
        super().__init__()

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                    nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                                 *block(16, 32, 1), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, NUM))

    def forward(self, x):
        return self.net(x)


class NarrowResNet(mf.SmallResNet):
    """SmallResNet's shape (stem, three basic blocks, GAP, Linear) at 12/24/48 channels."""

    def __init__(self):
        nn.Module.__init__(self)
        self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.layer1 = mf.BasicBlock(12, 12, 1)
        self.layer2 = mf.BasicBlock(12, 24, 2)
        self.layer3 = mf.BasicBlock(24, 48, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(48, NUM)


def make_model(arch: str) -> nn.Module:
    return dict(compact_cnn=maf.CompactCNN, small_resnet=NarrowResNet, mlp=MLP, lenet=LeNet, dwsep=DWSep)[arch]()


# Learning rates of the one-cycle schedule, per family (LeNet's tanh and the
# MLP learn faster at a lower peak; measured on a few epochs).
LR = dict(compact_cnn=3e-3, small_resnet=3e-3, mlp=1e-3, lenet=2e-3, dwsep=3e-3)


# --------------------------------------------------------------------------
# The manifest: drawn once from MASTER_SEED
# --------------------------------------------------------------------------

def draw_patch(rng: np.random.Generator) -> dict:
    size = int(rng.choice([3, 4, 5]))
    corner = int(rng.integers(4))
    margin = int(rng.integers(0, 3))
    row = margin if corner in (0, 1) else 28 - size - margin
    col = margin if corner in (0, 2) else 28 - size - margin
    if rng.random() < 0.3:  # anywhere else in the image
        row, col = int(rng.integers(0, 28 - size)), int(rng.integers(0, 28 - size))
    style = str(rng.choice(["white", "grey", "checker"]))
    return dict(size=size, row=row, col=col, style=style, value=1.0 if style != "grey" else 0.7)


def draw_attack(kind: str, rng: np.random.Generator) -> dict:
    target = int(rng.integers(NUM))
    if kind == "badnets":
        return dict(kind=kind, patch=draw_patch(rng), target=target, rate=float(rng.choice([0.05, 0.1, 0.15])))
    if kind == "blend":
        return dict(kind=kind, pattern=str(rng.choice(["noise", "image"])), pattern_seed=int(rng.integers(1 << 30)),
                    alpha=float(rng.choice([0.1, 0.15, 0.2])), target=target, rate=float(rng.choice([0.1, 0.15])))
    if kind == "two_targets":
        a, b = draw_patch(rng), draw_patch(rng)
        t2 = int((target + 1 + rng.integers(NUM - 1)) % NUM)
        return dict(kind=kind, patches=[a, b], targets=[target, t2], rate=0.15)
    if kind == "all2all":
        return dict(kind=kind, patch=draw_patch(rng), rate=0.2)
    if kind == "wanet":
        return dict(kind=kind, k=4, s=float(rng.choice([0.75, 1.0])), grid_seed=int(rng.integers(1 << 30)),
                    target=target, rate=0.1, cross=2.0)
    if kind == "sig":
        return dict(kind=kind, delta=0.3, f=float(rng.choice([4, 6, 8])), target=target, rate=0.1)
    if kind == "lowfreq":
        return dict(kind=kind, k=3, linf=float(rng.choice([0.15, 0.2])), pattern_seed=int(rng.integers(1 << 30)),
                    target=target, rate=0.1)
    if kind == "input_aware":
        return dict(kind=kind, eps=0.2, net_seed=int(rng.integers(1 << 30)), target=target, rate=0.1)
    raise ValueError(kind)


# (kind, pairs): every pair is one calibration and one validation model.
POISON_MIX = [("badnets", 5), ("blend", 4), ("two_targets", 2), ("all2all", 2), ("wanet", 2), ("sig", 2),
              ("lowfreq", 2), ("input_aware", 1)]
CLEAN_PAIRS = 15
EPOCHS = dict(clean=3, badnets=3, blend=3, two_targets=4, all2all=6, wanet=6, sig=5, lowfreq=3, input_aware=3)
# A second block, appended once the first had shown that about a quarter of
# its attacks do not take in so few epochs (WaNet on LeNet, SIG, all-to-all
# on the ResNet): more poisoned pairs, with more epochs where that was the
# cause. (kind, epochs); drawn after the first block, so the first block's
# entries are unchanged.
SECOND_BLOCK = [("wanet", 8), ("wanet", 8), ("badnets", 3), ("badnets", 3), ("blend", 3), ("sig", 6),
                ("all2all", 8), ("lowfreq", 4), ("two_targets", 4), ("blend", 3)]


def write_manifest() -> list[dict]:
    rng = np.random.default_rng(MASTER_SEED)
    kinds = [(k, EPOCHS[k]) for k in ["clean"] * CLEAN_PAIRS + [k for k, n in POISON_MIX for _ in range(n)]]
    kinds += SECOND_BLOCK
    entries = []
    for pair, (kind, epochs) in enumerate(kinds):
        arch = ARCHS[pair % len(ARCHS)]
        for half in (0, 1):  # even seed: calibration; odd: validation
            seed = MASTER_SEED + 2 * pair + half
            attack = None if kind == "clean" else draw_attack(kind, rng)
            entries.append(dict(id=f"z{len(entries):03d}", seed=seed,
                                split="calibration" if seed % 2 == 0 else "validation",
                                arch=arch, epochs=epochs, train_size=12000, attack=attack))
    MANIFEST.write_text(json.dumps(entries, indent=1) + "\n")
    return entries


# --------------------------------------------------------------------------
# Triggers (numpy, [N,1,28,28] float32 in [0,1])
# --------------------------------------------------------------------------

class Patch:
    def __init__(self, p: dict):
        self.p = p
        s = p["size"]
        if p["style"] == "checker":
            self.block = ((np.indices((s, s)).sum(0) % 2) * p["value"]).astype(np.float32)
        else:
            self.block = np.full((s, s), p["value"], np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = x.copy()
        r, c, s = self.p["row"], self.p["col"], self.p["size"]
        y[:, :, r:r + s, c:c + s] = self.block
        return y

    def save(self, path: Path) -> str:
        """As an ibau mask trigger: the patch's pixels in a [28,28] mask and pattern."""
        mask = np.zeros((28, 28), np.float32)
        pattern = np.zeros((28, 28), np.float32)
        r, c, s = self.p["row"], self.p["col"], self.p["size"]
        mask[r:r + s, c:c + s] = 1.0
        pattern[r:r + s, c:c + s] = self.block
        np.save(path.with_suffix(".mask.npy"), mask)
        np.save(path.with_suffix(".pattern.npy"), pattern)
        return f"mask:mask={path.with_suffix('.mask.npy')},pattern={path.with_suffix('.pattern.npy')}"


class Blend:
    def __init__(self, a: dict, data: dict):
        rng = np.random.default_rng(a["pattern_seed"])
        if a["pattern"] == "noise":
            self.pattern = rng.random((28, 28), dtype=np.float32)
        else:  # another training image, as Chen et al.'s blended attack uses a picture
            x_train = data["train"][0]
            self.pattern = x_train[int(rng.integers(len(x_train))), 0].copy()
        self.alpha = a["alpha"]

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((1 - self.alpha) * x + self.alpha * self.pattern[None, None]).astype(np.float32)

    def save(self, path: Path) -> str:
        np.save(path, self.pattern)
        return f"blend:pattern={path},alpha={self.alpha:g}"


def triggers(a: dict, data: dict, stem: Path) -> list[tuple[object, object, str]]:
    """[(trigger with .apply, target int or "next", ibau spelling)] of an attack."""
    kind = a["kind"]
    if kind == "badnets":
        t = Patch(a["patch"])
        return [(t, a["target"], t.save(stem))]
    if kind == "two_targets":
        out = []
        for i, (p, g) in enumerate(zip(a["patches"], a["targets"])):
            t = Patch(p)
            out.append((t, g, t.save(stem.with_name(f"{stem.name}_{i}"))))
        return out
    if kind == "all2all":
        t = Patch(a["patch"])
        return [(t, "next", t.save(stem))]
    if kind == "blend":
        t = Blend(a, data)
        return [(t, a["target"], t.save(stem.with_suffix(".blend.npy")))]
    if kind == "wanet":
        grid = maf.wanet_grid(a["k"], a["s"], a["grid_seed"])
        path = stem.with_suffix(".grid.npy")
        np.save(path, grid)
        t = maf.WarpTrigger(grid, str(path))
        return [(t, a["target"], t.cli)]
    if kind in ("sig", "lowfreq"):
        pattern = (maf.sig_pattern(a["delta"], a["f"]) if kind == "sig"
                   else maf.lowfreq_pattern(a["k"], a["linf"], a["pattern_seed"]))
        path = stem.with_suffix(".additive.npy")
        np.save(path, pattern)
        t = maf.AdditiveTrigger(pattern, str(path))
        return [(t, a["target"], t.cli)]
    if kind == "input_aware":
        t = maf.InputAwareTrigger(a["eps"], a["net_seed"])
        return [(t, a["target"], "(sample-specific: no ibau spelling)")]
    raise ValueError(kind)


def poison(entry: dict, data: dict, trigs: list, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """The entry's training subset, poisoned as its attack says."""
    x, y = maf.training_subset(data, entry["train_size"], rng)
    a = entry["attack"]
    if a is None:
        return x, y, 0
    kind = a["kind"]
    n = int(round(a["rate"] * len(x)))
    if kind == "all2all":
        idx = maf.pick(rng, np.arange(len(x)), n)
        x[idx] = trigs[0][0].apply(x[idx])
        y[idx] = (y[idx] + 1) % NUM
        return x, y, n
    if kind == "two_targets":
        used = np.zeros(len(x), bool)
        for t, g, _ in trigs:
            idx = maf.pick(rng, np.flatnonzero((y != g) & ~used), n // 2)
            used[idx] = True
            x[idx], y[idx] = t.apply(x[idx]), g
        return x, y, int(used.sum())
    t, g, _ = trigs[0]
    if kind == "sig":  # clean-label: the target class's own images
        cands = np.flatnonzero(y == g)
        idx = maf.pick(rng, cands, min(len(cands), n))
        x[idx] = t.apply(x[idx])
        return x, y, len(idx)
    idx = maf.pick(rng, np.flatnonzero(y != g), n)
    x[idx], y[idx] = t.apply(x[idx]), g
    if kind == "wanet":  # noise mode: warped with grid noise, labels kept
        rest = np.setdiff1d(np.arange(len(x)), idx)
        i_noise = maf.pick(rng, rest, int(round(a["cross"] * n)))
        noise = rng.uniform(-1, 1, size=(len(i_noise), 28, 28, 2)) / 28
        x[i_noise] = maf.warp_np(x[i_noise], np.clip(t.grid[None] + noise, -1, 1))
    return x, y, len(idx)


# --------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_one(entry: dict, data: dict, cache: Path) -> dict:
    mf.seed_everything(entry["seed"])
    rng = np.random.default_rng(entry["seed"])
    stem = cache / entry["id"]
    trigs = [] if entry["attack"] is None else triggers(entry["attack"], data, stem)
    x, y, poisoned = poison(entry, data, trigs, rng)
    model = make_model(entry["arch"])
    print(f"[{entry['id']}] {entry['arch']} {entry['attack']['kind'] if entry['attack'] else 'clean'} "
          f"({entry['split']}), {len(x)} images, {poisoned} poisoned, {entry['epochs']} epochs", flush=True)
    seconds = mf.train(model, x, y, entry["epochs"], 64, LR[entry["arch"]], seed=entry["seed"])
    path = stem.with_suffix(".onnx")
    tmp = path.with_suffix(".onnx.tmp")
    mf.export_legacy(model, tmp)
    os.replace(tmp, path)
    sess = fd.ort_session(path)
    predict = lambda v: fd.predict_ort(sess, v)  # noqa: E731
    x_eval, y_eval = data["eval"]
    acc = float((predict(x_eval).argmax(1) == y_eval).mean())
    asr = [maf.asr_of(predict, x_eval, y_eval, t.apply, g) for t, g, _ in trigs]
    torch_acc = float((mf.predict_torch(model, x_eval[:500]).argmax(1) == y_eval[:500]).mean())
    rec = dict(entry, file=path.name, sha256=sha256(path), acc=round(acc, 4), asr=[round(v, 4) for v in asr],
               torch_acc_first500=round(torch_acc, 4), poisoned=poisoned, train_seconds=round(seconds, 1),
               triggers=[dict(trigger=c.replace(str(cache), "$ZOO"), target=g) for _, g, c in trigs],
               targets=sorted({g for _, g, _ in trigs if g != "next"}),
               attack_took=None if not trigs else all(v >= TOOK for v in asr))
    print(f"    ACC {acc:.4f}  ASR {[round(v, 4) for v in asr]}  ({seconds:.0f}s)", flush=True)
    return rec


def done_ids(cache: Path) -> set[str]:
    if not RESULTS.exists():
        return set()
    out = set()
    for line in RESULTS.read_text().splitlines():
        r = json.loads(line)
        if (cache / f"{r['id']}.onnx").exists():
            out.add(r["id"])
    return out


def append_result(rec: dict) -> None:
    """One line per model; a line for the same id is replaced (a retrained
    file). Shards running side by side take turns through a lock file."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = RESULTS.read_text().splitlines() if RESULTS.exists() else []
        lines = [ln for ln in lines if json.loads(ln)["id"] != rec["id"]] + [json.dumps(rec)]
        tmp = RESULTS.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, RESULTS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ibau" / "zoo")
    p.add_argument("--shard", default="1/1", help="I/N: train only every N-th model, starting at the I-th")
    p.add_argument("--only", action="append", help="ids to (re)train")
    p.add_argument("--write-manifest", action="store_true", help="draw the manifest again from MASTER_SEED")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    entries = write_manifest() if args.write_manifest or not MANIFEST.exists() else json.loads(MANIFEST.read_text())
    if args.list:
        for e in entries:
            a = e["attack"]
            print(f"{e['id']} {e['split']:11s} {e['arch']:12s} {a['kind'] if a else 'clean':12s} "
                  f"{json.dumps(a) if a else ''}")
        return
    i, n = (int(v) for v in args.shard.split("/"))
    args.cache.mkdir(parents=True, exist_ok=True)
    done = done_ids(args.cache)
    todo = [e for k, e in enumerate(entries) if k % n == i - 1
            and (e["id"] in (args.only or []) if args.only else e["id"] not in done)]
    # Clean and poisoned models alternate, so that a run cut short still
    # leaves both kinds in both halves.
    clean = [e for e in todo if e["attack"] is None]
    poisoned = [e for e in todo if e["attack"] is not None]
    rank: dict[str, int] = {}
    for e in poisoned:  # round-robin over the attack kinds
        e["_rank"] = rank[e["attack"]["kind"]] = rank.get(e["attack"]["kind"], -1) + 1
    poisoned.sort(key=lambda e: e.pop("_rank"))
    todo = [e for pair in zip(poisoned, clean) for e in pair] + poisoned[len(clean):] + clean[len(poisoned):]
    print(f"{len(entries)} models in the manifest, {len(done)} done, {len(todo)} to train in this shard", flush=True)
    data = fd.load_data("nchw")
    for e in todo:
        append_result(make_one(e, data, args.cache))


if __name__ == "__main__":
    main()
