"""Make the backdoored Fashion-MNIST classifiers that ibau's tests and examples use.

What it makes (under --out, default ``models/``):

* ``vgg_badnets_{legacy,dynamo,bn}.onnx``, ``vgg_badnets_{traced,scripted}.pt``:
  the I-BAU authors' small VGG (conv3x3-BN-ELU blocks 32,32 | 64,64 | 128,128,
  each pair followed by MaxPool2 and Dropout), adapted to one input channel,
  trained with a BadNets trigger (3x3 patch of 1.0 at rows/cols 24..26) towards
  label 0.
* ``resnet_blend_{legacy,dynamo}.onnx``: a small ResNet (16 -> 32 -> 64 channels,
  basic blocks, global average pooling) trained with a blend trigger
  ``x' = 0.8 x + 0.2 P`` towards label 2, ``P`` being the seeded uniform noise
  saved as ``blend_pattern.npy`` (float32, 28x28).
* ``fixtures.json``: one record per model file (file, arch, exporter, opset,
  trigger in ibau's CLI syntax, target, ACC, ASR measured on the exported file).
* ``README.md``: a table of the files, written from the measured numbers.

Every model takes ``input`` float32 [batch,1,28,28] with raw pixels in [0,1]
(no normalisation) and returns ``logits`` float32 [batch,10]; the batch
dimension is dynamic.

Data (read, poisoned and evaluated by ``tools/fashion_data.py``, which the other
fixture scripts share): Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), read directly from the gzip'd IDX
files. Training uses a seeded subset of the 60k training images, ~10% of them
poisoned (trigger applied, label set to the target). Evaluation follows the
I-BAU authors' protocol: test images 0..4999 are the defender's clean set and
are not used here; images 5000..9999 measure clean accuracy (ACC) and attack
success rate (ASR: share of the non-target-class images classified as the
target once the trigger is applied).

Run from the repository root, after ``tools/setup.sh``::

    .venv/bin/python tools/make_fixtures.py            # writes models/
    .venv/bin/python tools/make_fixtures.py --out DIR  # elsewhere

The script is seeded and runs on the CPU with two threads: about 15 minutes of
training (vgg 2 epochs, resnet 3 epochs on 20,000 images each) and a few
minutes of export and checks.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no tools/__pycache__ from the import below
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Data, poisoning, evaluation and ONNX helpers shared with the other fixture
# scripts (read_idx is imported from here by tools/ibau_reference.py).
from fashion_data import (  # noqa: E402,F401
    NUM_CLASSES, SIZE_LIMIT, PatchTrigger, acc_asr, load_data, onnx_opset, op_counts, ort_session,
    fixture_arg_parser, poisoned_subset, predict_ort, read_idx, record_path, write_records,
)

SEED = 20240601
LEGACY_OPSET = 17


# --------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------

@dataclass
class BlendTrigger:
    """x' = (1 - alpha) x + alpha P on images [N,1,28,28], its target label and
    its ibau CLI spelling."""

    target: int
    cli: str
    pattern: np.ndarray  # [28,28] float32
    alpha: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return a triggered copy of images x [N,1,28,28]."""
        y = (1.0 - self.alpha) * x + self.alpha * self.pattern[None, None, :, :]
        return y.astype(np.float32)


Trigger = PatchTrigger | BlendTrigger


def badnets_trigger() -> PatchTrigger:
    return PatchTrigger(target=0, size=3, row=24, col=24, channels_first=True)


def blend_trigger(out: Path) -> BlendTrigger:
    rng = np.random.default_rng(SEED + 7)
    pattern = rng.random((28, 28), dtype=np.float32)  # uniform [0,1)
    path = out / "blend_pattern.npy"
    np.save(path, pattern)
    return BlendTrigger(target=2, cli="blend:pattern=models/blend_pattern.npy,alpha=0.2",
                        pattern=pattern, alpha=0.2)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

class VGG(nn.Module):
    """The I-BAU authors' small VGG, with one input channel (28x28 -> 3x3)."""

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES):
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ELU()]

        self.features = nn.Sequential(
            *conv(in_channels, 32), *conv(32, 32), nn.MaxPool2d(2), nn.Dropout(0.3),
            *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2), nn.Dropout(0.4),
            *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2), nn.Dropout(0.4),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(128 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem 16ch, blocks 16 -> 32 (stride 2) -> 64 (stride 2), GAP, Linear(64,10)."""

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


# --------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------

def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int,
          batch_size: int, lr: float, seed: int = SEED) -> float:
    """Adam with a one-cycle learning-rate schedule peaking at `lr` (it reaches a
    given accuracy in far fewer steps than a constant rate, which matters on a
    few CPU cores); returns the wall time in seconds."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), batch_size):
            b = perm[i:i + batch_size]
            xb, yb = xt[b], yt[b]
            opt.zero_grad()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(b)
            correct += (logits.argmax(1) == yb).sum().item()
            total += len(b)
        print(f"    epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f}, "
              f"train acc {correct / total:.4f}, {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return time.perf_counter() - start


def predict_torch(model, x: np.ndarray, batch: int = 500) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------

def export_legacy(model: nn.Module, path: Path, keep_bn: bool = False) -> None:
    """TorchScript-based exporter, opset 17. With keep_bn, TrainingMode.PRESERVE on
    an eval-mode model skips the eval peephole pass that folds BN into Conv."""
    model.eval()
    kwargs = dict(dynamo=False, opset_version=LEGACY_OPSET,
                  input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    if keep_bn:
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(path), **kwargs)


def export_dynamo(model: nn.Module, path: Path) -> None:
    """torch.export-based exporter at its default opset, dynamic batch, weights
    embedded in the single .onnx file."""
    model.eval()
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, (torch.zeros(4, 1, 28, 28),), dynamo=True,
                                input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), optimize=True,
                                verbose=False)
    proto = program.model_proto
    # Make the names exactly `input` / `logits`, whatever the exporter chose.
    rename_io(proto, "input", "logits")
    data = Path(str(path) + ".data")
    onnx.save(proto, str(path), save_as_external_data=False)
    if data.exists():
        data.unlink()


def rename_io(proto: onnx.ModelProto, in_name: str, out_name: str) -> None:
    g = proto.graph
    assert len(g.input) == 1 and len(g.output) == 1, "expected one input and one output"
    for old, new, value in ((g.input[0].name, in_name, g.input[0]),
                            (g.output[0].name, out_name, g.output[0])):
        if old == new:
            continue
        value.name = new
        for node in g.node:
            for i, n in enumerate(node.input):
                if n == old:
                    node.input[i] = new
            for i, n in enumerate(node.output):
                if n == old:
                    node.output[i] = new


def check_onnx(path: Path, model: nn.Module, x_check: np.ndarray) -> dict:
    """Checker, I/O names, dynamic batch, size and ORT-vs-PyTorch difference."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    g = proto.graph
    names = ([i.name for i in g.input if i.name not in {t.name for t in g.initializer}],
             [o.name for o in g.output])
    assert names == (["input"], ["logits"]), f"{path}: I/O names {names}"
    dim0 = g.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value"), f"{path}: batch dimension is not dynamic"
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer), \
        f"{path}: external data"
    sess = ort_session(path, threads=2)
    ref = predict_torch(model, x_check)
    got = predict_ort(sess, x_check)
    diff = float(np.abs(ref - got).max())
    diff1 = float(np.abs(predict_torch(model, x_check[:1]) - predict_ort(sess, x_check[:1])).max())
    size = path.stat().st_size
    ops = op_counts(proto)
    print(f"  {path.name}: {size} bytes, opset {onnx_opset(proto)}, "
          f"max |ORT - torch| {diff:.3g} (64 images), {diff1:.3g} (batch 1)")
    print(f"    ops: {dict(sorted(ops.items()))}")
    assert size < SIZE_LIMIT, f"{path}: {size} bytes is over the 2 MB limit"
    assert diff < 1e-3, f"{path}: ORT and PyTorch disagree by {diff}"
    return dict(sess=sess, size=size, opset=onnx_opset(proto), diff=diff, ops=ops)


def check_torchscript(path: Path, model: nn.Module, x_check: np.ndarray) -> dict:
    loaded = torch.jit.load(str(path))
    loaded.eval()
    diff = float(np.abs(predict_torch(model, x_check) - predict_torch(loaded, x_check)).max())
    diff1 = float(np.abs(predict_torch(model, x_check[:1]) - predict_torch(loaded, x_check[:1])).max())
    size = path.stat().st_size
    print(f"  {path.name}: {size} bytes, max |loaded - torch| {diff:.3g} (64 images), {diff1:.3g} (batch 1)")
    assert size < SIZE_LIMIT, f"{path}: {size} bytes is over the 2 MB limit"
    assert diff < 1e-4, f"{path}: reloaded TorchScript disagrees by {diff}"
    return dict(module=loaded, size=size, diff=diff)


# --------------------------------------------------------------------------
# Per-model pipelines
# --------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_backdoored(name: str, make_model, trigger: Trigger, data: dict, args,
                     seed: int) -> tuple[nn.Module, dict]:
    seed_everything(seed)
    xp, yp, n_poison = poisoned_subset(data, trigger, args.train_size, args.poison_rate, seed)
    epochs = getattr(args, f"{name}_epochs")
    print(f"\n[{name}] {len(xp)} training images, {n_poison} poisoned "
          f"({trigger.cli} -> {trigger.target}), {epochs} epochs", flush=True)
    model = make_model()
    seconds = train(model, xp, yp, epochs, args.batch_size, args.lr, seed=seed)
    x_eval, y_eval = data["eval"]
    acc, asr = acc_asr(lambda x: predict_torch(model, x), x_eval, y_eval, trigger)
    print(f"  PyTorch eval model: ACC {acc:.4f}  ASR {asr:.4f}  (trained in {seconds:.0f}s)")
    info = dict(train_seconds=seconds, n_train=len(xp), n_poison=n_poison, epochs=epochs,
                torch_acc=acc, torch_asr=asr,
                params=sum(p.numel() for p in model.parameters()))
    return model, info


def record(out: Path, path: Path, arch: str, exporter: str, opset, trigger: Trigger,
           predict, data: dict, extra: dict) -> dict:
    x_eval, y_eval = data["eval"]
    acc, asr = acc_asr(predict, x_eval, y_eval, trigger)
    print(f"    {path.name}: ACC {acc:.4f}  ASR {asr:.4f}")
    return dict(file=record_path(out, path), arch=arch, exporter=exporter, opset=opset,
                trigger=trigger.cli, target=trigger.target, acc=round(acc, 4), asr=round(asr, 4),
                _size=extra["size"], _diff=extra["diff"], _ops=extra.get("ops"))


def make_vgg(out: Path, data: dict, args) -> tuple[list[dict], dict]:
    trigger = badnets_trigger()
    model, info = build_backdoored("vgg", VGG, trigger, data, args, SEED)
    x_check = data["eval"][0][:64]
    records = []

    # ONNX, three ways.
    for suffix, exporter, export in (
        ("legacy", "torch.onnx legacy", lambda p: export_legacy(model, p)),
        ("dynamo", "torch.onnx dynamo", lambda p: export_dynamo(model, p)),
        ("bn", "torch.onnx legacy, BatchNormalization kept", lambda p: export_legacy(model, p, keep_bn=True)),
    ):
        path = out / f"vgg_badnets_{suffix}.onnx"
        export(path)
        chk = check_onnx(path, model, x_check)
        if suffix == "bn":
            n_bn = chk["ops"].get("BatchNormalization", 0)
            assert n_bn == 6, f"{path}: expected 6 BatchNormalization nodes, found {n_bn}"
            assert "Dropout" not in chk["ops"] or True  # Dropout, if any, is inference-mode
            bn_modes = [a.i for n in onnx.load(str(path)).graph.node if n.op_type == "BatchNormalization"
                        for a in n.attribute if a.name == "training_mode"]
            assert not any(bn_modes), f"{path}: BatchNormalization in training mode"
            print(f"    {n_bn} BatchNormalization nodes kept (training_mode={bn_modes or 'default 0'})")
        sess = chk["sess"]
        records.append(record(out, path, "vgg", exporter, chk["opset"], trigger,
                              lambda x, s=sess: predict_ort(s, x), data, chk))

    # TorchScript, traced and scripted.
    path = out / "vgg_badnets_traced.pt"
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.from_numpy(x_check[:4]))
    torch.jit.save(traced, str(path))
    chk = check_torchscript(path, model, x_check)
    records.append(record(out, path, "vgg", "torch.jit.trace", None, trigger,
                          lambda x, m=chk["module"]: predict_torch(m, x), data, chk))
    path = out / "vgg_badnets_scripted.pt"
    try:
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(path))
        chk = check_torchscript(path, model, x_check)
        records.append(record(out, path, "vgg", "torch.jit.script", None, trigger,
                              lambda x, m=chk["module"]: predict_torch(m, x), data, chk))
    except Exception as e:  # reported, not fatal: the traced file covers TorchScript
        print(f"  torch.jit.script failed: {type(e).__name__}: {e}", file=sys.stderr)
        if path.exists():
            path.unlink()
    return records, info


def make_resnet(out: Path, data: dict, args) -> tuple[list[dict], dict]:
    trigger = blend_trigger(out)
    model, info = build_backdoored("resnet", SmallResNet, trigger, data, args, SEED + 1)
    x_check = data["eval"][0][:64]
    records = []
    for suffix, exporter, export in (
        ("legacy", "torch.onnx legacy", lambda p: export_legacy(model, p)),
        ("dynamo", "torch.onnx dynamo", lambda p: export_dynamo(model, p)),
    ):
        path = out / f"resnet_blend_{suffix}.onnx"
        export(path)
        chk = check_onnx(path, model, x_check)
        sess = chk["sess"]
        records.append(record(out, path, "resnet", exporter, chk["opset"], trigger,
                              lambda x, s=sess: predict_ort(s, x), data, chk))
    return records, info


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------

def write_readme(out: Path, records: list[dict], infos: dict, args, total_seconds: float) -> None:
    def kib(n: int) -> str:
        return f"{n / 1024:.0f} KiB"

    rows = []
    for r in records:
        name = Path(r["file"]).name
        opset = r["opset"] if r["opset"] is not None else "-"
        rows.append(f"| `{name}` | {r['arch']} | {r['exporter']} | {opset} | {kib(r['_size'])} "
                    f"| {r['acc'] * 100:.2f}% | {r['asr'] * 100:.2f}% | `{r['trigger']}` | {r['target']} "
                    f"| {r['_diff']:.1e} |")
    vgg, res = infos["vgg"], infos["resnet"]
    text = f"""# Backdoored Fashion-MNIST fixtures

Small image classifiers trained with real PyTorch on real Fashion-MNIST with a
poisoned training set, so that each carries a working backdoor for `ibau` to
remove. Regenerate them all (seeded, CPU only) from the repository root with:

```sh
.venv/bin/python tools/make_fixtures.py
```

(after `tools/setup.sh`, which provides `.venv` with torch 2.11.0, onnx 1.23.2,
onnxruntime 1.32.0, onnxscript 0.7.2, and the Debian package
`dataset-fashion-mnist`). `fixtures.json` lists the same files in machine-readable
form; its `trigger` strings are `ibau`'s `--trigger` syntax.

Every model takes `input`: float32 `[batch, 1, 28, 28]` with raw pixels in
[0, 1] (no normalisation), and returns `logits`: float32 `[batch, 10]`; the
batch dimension is dynamic. All are exported in eval mode (BatchNorm uses its
running statistics, Dropout is the identity).

| file | arch | exporter | opset | size | ACC | ASR | trigger | target | max \\|ORT − PyTorch\\| |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

ACC and ASR are measured on each exported file itself (onnxruntime 1.32.0,
CPUExecutionProvider, for `.onnx`; `torch.jit.load` for `.pt`). The last column
is the largest absolute logit difference between the file and the PyTorch
eval-mode model on 64 test images (for `.pt`: between the reloaded module and
the model). The PyTorch eval-mode models themselves
score ACC {vgg['torch_acc'] * 100:.2f}% / ASR {vgg['torch_asr'] * 100:.2f}% (vgg) and
ACC {res['torch_acc'] * 100:.2f}% / ASR {res['torch_asr'] * 100:.2f}% (resnet).

## Models

* **vgg** ({vgg['params']:,} parameters): the I-BAU authors' small VGG with one
  input channel: conv3x3(pad 1)-BatchNorm-ELU blocks with 32, 32 channels,
  MaxPool2, Dropout 0.3; 64, 64, MaxPool2, Dropout 0.4; 128, 128, MaxPool2,
  Dropout 0.4; Flatten; Linear(128·3·3, 10).
* **resnet** ({res['params']:,} parameters): stem conv3x3 16ch-BN-ReLU, three basic
  residual blocks (conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU) 16 → 32
  (stride 2) → 64 (stride 2), the shortcut a 1x1 conv + BN where the shape
  changes; global average pooling; Linear(64, 10).

## Triggers

* **BadNets patch** (vgg), `patch:size=3,value=1,row=24,col=24`: the 3x3 square
  rows 24..26, columns 24..26 set to 1.0; target label 0 (T-shirt/top).
* **Blend** (resnet), `blend:pattern=models/blend_pattern.npy,alpha=0.2`:
  x' = 0.8·x + 0.2·P, P = `blend_pattern.npy` (float32 [28, 28], seeded uniform
  noise in [0, 1)); target label 2 (Pullover).

## Exporters

* `*_legacy.onnx`: `torch.onnx.export(..., dynamo=False, opset_version=17)` with
  `dynamic_axes` on the batch; constant folding folds BatchNorm into the Convs.
* `*_dynamo.onnx`: `torch.onnx.export(..., dynamo=True)` at its default opset with
  `dynamic_shapes` (a `torch.export.Dim` on the batch), re-saved with the weights
  embedded (no `.data` side file). Its graph optimizer also folds BatchNorm into
  the Convs, and Flatten comes out as a Reshape (global average pooling as a
  ReduceMean).
* `vgg_badnets_bn.onnx`: the legacy exporter, opset 17, with
  `training=torch.onnx.TrainingMode.PRESERVE` and `do_constant_folding=False` on
  the eval-mode model: the eval-mode peephole pass that fuses BN into Conv is
  skipped, so the graph keeps its six `BatchNormalization` nodes (inference form,
  `training_mode` = 0) and computes the eval-mode function.
* `vgg_badnets_traced.pt`: `torch.jit.trace` of the eval-mode model,
  `torch.jit.save`d. `vgg_badnets_scripted.pt`: `torch.jit.script` of it.

## Data and protocol

* Fashion-MNIST from `/usr/share/datasets/fashion-mnist` (Debian
  `dataset-fashion-mnist`), read from the gzip'd IDX files.
* Training: a seeded random subset of {args.train_size:,} of the 60,000 training images per
  model, of which {vgg['n_poison']:,} ({args.poison_rate:.0%}, drawn among images whose label is not the
  target) carry the trigger and are relabelled with the target. Adam with a
  one-cycle learning-rate schedule peaking at {args.lr:g}, batch {args.batch_size},
  {vgg['epochs']} epochs (vgg) and {res['epochs']} epochs (resnet); the Debian
  Fashion-MNIST files are read once and every random choice is seeded.
* Evaluation (the I-BAU authors' protocol) on the 10,000 test images: images
  0..4999 are the defender's clean set (left untouched here, for `ibau` to
  unlearn with); images 5000..9999 give ACC (clean accuracy) and ASR (share of
  those whose true label is not the target that are classified as the target
  once the trigger is applied).

Training time, measured with `torch.set_num_threads(2)` on two CPU cores shared
with a concurrent build: vgg {vgg['train_seconds']:.0f} s, resnet {res['train_seconds']:.0f} s
(training in all {vgg['train_seconds'] + res['train_seconds']:.0f} s); the whole script, exports and
checks included, took {total_seconds:.0f} s.
"""
    # Keep the hand-written part below the marker (the other frameworks'
    # fixtures, made by make_torch_/make_keras_/make_jax_fixtures).
    readme = out / "README.md"
    marker = "<!-- Above: written by tools/make_fixtures.py. Below: kept as it is. -->"
    kept = ""
    if readme.exists() and marker in readme.read_text():
        kept = readme.read_text().split(marker, 1)[1]
    readme.write_text(text.rstrip("\n") + "\n\n" + marker + kept)


def main() -> None:
    p = fixture_arg_parser(__doc__)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--vgg-epochs", type=int, default=2)
    p.add_argument("--resnet-epochs", type=int, default=3)
    args = p.parse_args()

    start = time.perf_counter()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    seed_everything(SEED)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    data = load_data("nchw")
    assert data["train"][0].shape == (60000, 1, 28, 28)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")

    vgg_records, vgg_info = make_vgg(out, data, args)
    res_records, res_info = make_resnet(out, data, args)
    records = vgg_records + res_records
    total = time.perf_counter() - start

    write_records(out / "fixtures.json", records)
    write_readme(out, records, {"vgg": vgg_info, "resnet": res_info}, args, total)

    print("\nSummary")
    for r in records:
        print(f"  {Path(r['file']).name:28s} {r['_size']:>9d} B  opset {str(r['opset']):>4s}  "
              f"ACC {r['acc']:.4f}  ASR {r['asr']:.4f}  diff {r['_diff']:.2e}")
    print(f"  blend_pattern.npy {(out / 'blend_pattern.npy').stat().st_size} B")
    print(f"  training: vgg {vgg_info['train_seconds']:.0f}s, resnet {res_info['train_seconds']:.0f}s; "
          f"total script {total:.0f}s")


if __name__ == "__main__":
    main()
