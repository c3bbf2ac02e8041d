"""Make backdoored Fashion-MNIST classifiers written with JAX / Flax (nnx) and
exported to ONNX by jax2onnx, so that ibau meets what that exporter writes.

What it makes (under --out, default ``models/``):

* ``jax_cnn.onnx``: a small CNN in Flax's natural NHWC layout, input ``input``
  float32 [B,28,28,1]: Conv3x3(16)-BatchNorm-ReLU-MaxPool2, Conv3x3(32)-BatchNorm-
  ReLU-AvgPool2, flatten, Linear(1568,64)-LayerNorm-ReLU, Linear(64,10). Trained
  with a BadNets trigger: the 3x3 square at rows 0..2, columns 24..26 set to 1.0
  (``patch:size=3,value=1,row=0,col=24``), target label 5 (Sandal).
* ``jax_mlp.onnx``: an MLP on the flattened image, input ``input`` float32
  [B,784] (row-major 28x28 pixels): Linear(784,256)-GELU-Linear(256,128)-GELU-
  Linear(128,10), GELU being Flax's default tanh approximation. Trained with a
  BadNets trigger: the 4x4 square at rows 12..15, columns 12..15 set to 1.0
  (``patch:size=4,value=1,row=12,col=12``), target label 8 (Bag).
* ``fixtures_jax.json``: one record per file (file, arch, framework, exporter,
  opset, input, output, trigger in ibau's CLI syntax, target, ACC, ASR, bytes).

With ``--clean`` it makes clean (unpoisoned) models instead, the references a
backdoor scanner is calibrated on: the same models, training and export with
poison rate 0 and other seeds (``CLEAN_SEED``, ``CLEAN_SEED + 1``), saved as
``clean_jax_cnn.onnx`` / ``clean_jax_mlp.onnx`` (``--only jax_cnn`` still names
the models by their backdoored names), their records (file, arch, framework,
exporter, opset, input, output, acc, params, seed, bytes; no trigger) merged
into ``fixtures_clean.json``, which the other frameworks' clean models share
(``tools/make_clean_fixtures.py``); ``fixtures_jax.json`` is not touched.

Both return ``logits`` float32 [B,10]; the batch dimension ``B`` is symbolic
(jax2onnx's string dimensions), pixels are raw values in [0,1] (no
normalisation). BatchNorm is exported with its running statistics
(``model.eval()``, i.e. ``use_running_average=True``). jax2onnx's defaults are
kept (opset 23, ``normalization_mode="auto"``); the model is serialised with its
weights embedded (no ``.onnx.data`` side file).

Data and protocol are those of ``tools/make_fixtures.py``, from
``tools/fashion_data.py`` (imported; numpy only): Fashion-MNIST from
``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``), read
from the gzip'd IDX files; a seeded subset of 20,000 training images per model,
10% of them (drawn among images not labelled with the target) carrying the
trigger and relabelled with the target; Adam with a one-cycle schedule. Test
images 0..4999 are the defender's clean set and are not used here; images
5000..9999 give ACC (clean accuracy) and ASR (share of the non-target-class
images classified as the target once the trigger is applied), both measured
with onnxruntime on the exported file.

Run through ``tools/make_jax_fixtures.sh`` (it builds the pinned virtual
environment, keeps XLA to one thread and passes ``--out models``; clean:
``tools/make_jax_fixtures.sh --out models --clean --only jax_cnn``). Training
takes a few minutes on one CPU thread.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax2onnx import allclose, to_onnx  # noqa: E402

sys.dont_write_bytecode = True  # no tools/__pycache__ from the import below
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_data import (  # noqa: E402  (data, poisoning, evaluation: shared)
    NUM_CLASSES, SIZE_LIMIT, PatchTrigger, acc_asr, evaluate_onnx, fixture_arg_parser, load_data,
    onnx_opset, op_counts, ort_session, poisoned_subset, predict_ort, record_path, shape_str, write_records,
    CLEAN_RECORDS, merge_records,
)

SEED = 20240611
CLEAN_SEED = 20250321  # --clean: not the backdoored models' seeds
OPSET = 23


# --------------------------------------------------------------------------
# Models (Flax nnx)
# --------------------------------------------------------------------------

class CNN(nnx.Module):
    """NHWC [B,28,28,1] -> logits [B,10]."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.bn2 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.fc1 = nnx.Linear(7 * 7 * 32, 64, rngs=rngs)
        self.ln = nnx.LayerNorm(64, rngs=rngs)
        self.fc2 = nnx.Linear(64, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nnx.relu(self.ln(self.fc1(x)))
        return self.fc2(x)


class MLP(nnx.Module):
    """[B,784] -> logits [B,10]."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(784, 256, rngs=rngs)
        self.fc2 = nnx.Linear(256, 128, rngs=rngs)
        self.fc3 = nnx.Linear(128, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.gelu(self.fc1(x))
        x = nnx.gelu(self.fc2(x))
        return self.fc3(x)


@dataclass
class Spec:
    """One fixture: its model, input layout, trigger and training settings."""

    name: str
    arch: str
    make: type
    layout: str  # "nhwc" or "flat"
    trigger: PatchTrigger
    epochs: int
    lr: float
    seed: int

    def to_input(self, x: np.ndarray) -> np.ndarray:
        """[N,28,28] images -> the model's input layout."""
        if self.layout == "nhwc":
            return np.ascontiguousarray(x[:, :, :, None])
        return np.ascontiguousarray(x.reshape(len(x), 28 * 28))

    @property
    def input_shape(self) -> tuple:
        return ("B", 28, 28, 1) if self.layout == "nhwc" else ("B", 784)


SPECS = [
    Spec("jax_cnn", "cnn", CNN, "nhwc", PatchTrigger(target=5, size=3, row=0, col=24),
         epochs=4, lr=3e-3, seed=SEED),
    Spec("jax_mlp", "mlp", MLP, "flat", PatchTrigger(target=8, size=4, row=12, col=12),
         epochs=12, lr=2e-3, seed=SEED + 1),
]


# --------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------

def train(model: nnx.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
          lr: float, seed: int) -> float:
    """Adam with a one-cycle schedule peaking at `lr`; returns the wall time in
    seconds. The last partial batch of each epoch is dropped (one jit shape)."""
    steps_per_epoch = len(x) // batch_size
    schedule = optax.cosine_onecycle_schedule(epochs * steps_per_epoch, lr)
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss_fn(model):
            logits = model(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, (logits.argmax(-1) == yb).sum()

    rng = np.random.default_rng(seed + 100)
    model.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = rng.permutation(len(x))
        loss_sum, correct = 0.0, 0
        for i in range(steps_per_epoch):
            b = perm[i * batch_size:(i + 1) * batch_size]
            loss, ok = step(model, optimizer, jnp.asarray(x[b]), jnp.asarray(y[b]))
            loss_sum += float(loss)
            correct += int(ok)
        n = steps_per_epoch * batch_size
        print(f"    epoch {epoch + 1}/{epochs}: loss {loss_sum / steps_per_epoch:.4f}, "
              f"train acc {correct / n:.4f}, {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return time.perf_counter() - start


def predict_jax(model: nnx.Module, x: np.ndarray, batch: int = 500) -> np.ndarray:
    fwd = nnx.jit(lambda m, xb: m(xb))
    return np.concatenate([np.asarray(fwd(model, jnp.asarray(x[i:i + batch])))
                           for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------
# Export and checks
# --------------------------------------------------------------------------

def export(model: nnx.Module, spec: Spec, path: Path) -> onnx.ModelProto:
    """jax2onnx at opset 23 with a symbolic batch; saved as one self-contained file."""
    model.eval()
    proto = to_onnx(model, inputs=[spec.input_shape], model_name=spec.name, opset=OPSET,
                    input_names=["input"], output_names=["logits"])
    onnx.save(proto, str(path), save_as_external_data=False)
    data = Path(str(path) + ".data")
    if data.exists():
        data.unlink()
    return onnx.load(str(path))


def check(model: nnx.Module, spec: Spec, path: Path, proto: onnx.ModelProto,
          x_check: np.ndarray) -> dict:
    """Structure, size, jax2onnx.allclose and ORT-vs-JAX difference."""
    g = proto.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    assert [i.name for i in inputs] == ["input"] and [o.name for o in g.output] == ["logits"], \
        f"{path}: I/O names {[i.name for i in inputs]} -> {[o.name for o in g.output]}"
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer), \
        f"{path}: external data"
    onnx.checker.check_model(proto)
    try:  # strict shape inference: reported, not fatal (jax2onnx value_info may be stale)
        onnx.checker.check_model(proto, full_check=True)
        full_check = "ok"
    except Exception as e:  # noqa: BLE001
        full_check = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    size = path.stat().st_size
    assert size < SIZE_LIMIT, f"{path}: {size} bytes is over the 2 MB limit"

    sess = ort_session(path)
    xi = spec.to_input(x_check)
    ref = predict_jax(model, xi)
    diff = float(np.abs(ref - predict_ort(sess, xi)).max())
    diff1 = float(np.abs(predict_jax(model, xi[:1]) - predict_ort(sess, xi[:1])).max())
    ok, msg = allclose(lambda x: model(x), str(path), inputs=[xi[:16]], rtol=1e-3, atol=1e-4)
    ops = dict(sorted(op_counts(proto).items()))
    in_shape, out_shape = shape_str(inputs[0]), shape_str(g.output[0])
    print(f"  {path.name}: {size} bytes, opset {onnx_opset(proto)}, IR {proto.ir_version}, "
          f"input {in_shape} -> logits {out_shape}")
    print(f"    ops: {ops}")
    print(f"    max |ORT - JAX| {diff:.3g} (64 images), {diff1:.3g} (batch 1); "
          f"jax2onnx.allclose: {ok}{'' if ok else ' ' + msg}; full_check: {full_check}")
    assert diff < 1e-3, f"{path}: ORT and JAX disagree by {diff}"
    return dict(sess=sess, size=size, opset=onnx_opset(proto), ir=proto.ir_version, diff=diff,
                ops=ops, in_shape=in_shape, out_shape=out_shape, full_check=full_check)


# --------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------

def make(spec: Spec, out: Path, data: dict, args) -> dict:
    random.seed(spec.seed)
    np.random.seed(spec.seed)
    xp, yp, n_poison = poisoned_subset(data, spec.trigger, args.train_size, args.poison_rate, spec.seed)
    print(f"\n[{spec.name}] {len(xp)} training images, {n_poison} poisoned "
          f"({spec.trigger.cli} -> {spec.trigger.target}), {spec.epochs} epochs", flush=True)
    model = spec.make(rngs=nnx.Rngs(spec.seed))
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    seconds = train(model, spec.to_input(xp), yp, spec.epochs, args.batch_size, spec.lr, spec.seed)
    x_eval, y_eval = data["eval"]
    jacc, jasr = acc_asr(lambda x: predict_jax(model, x), x_eval, y_eval, spec.trigger, spec.to_input)
    print(f"  JAX eval model ({params:,} parameters): ACC {jacc:.4f}  ASR {jasr:.4f}  "
          f"(trained in {seconds:.0f}s)")

    path = out / f"{spec.name}.onnx"
    proto = export(model, spec, path)
    chk = check(model, spec, path, proto, x_eval[:64])
    acc, asr = evaluate_onnx(chk["sess"], spec.trigger, x_eval, y_eval, spec.to_input)
    print(f"  {path.name} (onnxruntime): ACC {acc:.4f}  ASR {asr:.4f}")
    layout = ("NHWC, raw pixels in [0,1]" if spec.layout == "nhwc"
              else "flattened row-major 28x28, raw pixels in [0,1]")
    return dict(
        file=record_path(out, path), arch=spec.arch,
        framework=f"JAX {version('jax')} / Flax nnx {version('flax')}",
        exporter=f"jax2onnx {version('jax2onnx')}", opset=chk["opset"],
        input=f"input float32 {chk['in_shape']} ({layout})", output="logits",
        trigger=spec.trigger.cli, target=spec.trigger.target,
        acc=round(acc, 4), asr=round(asr, 4), bytes=chk["size"],
        _info=dict(ir=chk["ir"], ops=chk["ops"], out_shape=chk["out_shape"], diff=chk["diff"],
                   full_check=chk["full_check"], train_seconds=round(seconds, 1), params=params,
                   jax_acc=jacc, jax_asr=jasr, n_poison=n_poison),
    )


def main() -> None:
    p = fixture_arg_parser(__doc__, batch_size=128)
    p.add_argument("--only", choices=[s.name for s in SPECS], action="append",
                   help="make only these fixtures (fixtures_jax.json then lists only them)")
    p.add_argument("--clean", action="store_true",
                   help="clean models (poison rate 0, CLEAN_SEED, clean_* files, records merged into "
                        f"{CLEAN_RECORDS}) instead of the backdoored ones")
    args = p.parse_args()
    if args.clean:
        args.poison_rate = 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"jax {version('jax')}, flax {version('flax')}, optax {version('optax')}, "
          f"jax2onnx {version('jax2onnx')}, onnx {version('onnx')}, "
          f"onnxruntime {version('onnxruntime')}, numpy {version('numpy')}; "
          f"devices {jax.devices()}", flush=True)
    data = load_data("hw", label_dtype=np.int32)

    specs = [s for s in SPECS if not args.only or s.name in args.only]
    if args.clean:
        specs = [replace(s, name=f"clean_{s.name}", seed=CLEAN_SEED + SPECS.index(s)) for s in specs]
    records = [make(s, args.out, data, args) for s in specs]

    if args.clean:
        # No trigger: ACC only (the sibling trigger's "ASR" stays in the log).
        merge_records(args.out / CLEAN_RECORDS, [
            {k: r[k] for k in ("file", "arch", "framework", "exporter", "opset", "input", "output", "acc")}
            | dict(params=r["_info"]["params"], seed=s.seed, bytes=r["bytes"])
            for r, s in zip(records, specs)])
    else:
        write_records(args.out / "fixtures_jax.json", records)
    print("\nsummary:")
    for r in records:
        i = r["_info"]
        print(f"  {r['file']}: ACC {r['acc']:.4f} ASR {r['asr']:.4f}, {r['bytes']} bytes, "
              f"opset {r['opset']}, IR {i['ir']}, trained {i['train_seconds']}s")
    bad = [r["file"] for r in records
           if r["acc"] < (0.83 if r["arch"] == "mlp" else 0.85) or (r["asr"] < 0.95 and not args.clean)]
    written = args.out / (CLEAN_RECORDS if args.clean else "fixtures_jax.json")
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {written}")
    if bad:
        print(f"below the ACC/ASR goals: {bad}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
