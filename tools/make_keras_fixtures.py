"""Make two backdoored Fashion-MNIST classifiers with Keras 3 (TensorFlow backend),
exported to ONNX with tf2onnx, for ibau's tests of non-PyTorch exports.

What it makes (under --out, default ``models/``):

* ``keras_cnn_bn.onnx``: Conv2D(16, 3x3, same)-BatchNormalization-ReLU,
  MaxPool2, Conv2D(32, 3x3, same)-BatchNormalization-ReLU, MaxPool2, Flatten,
  Dense(64, relu), Dense(10); it returns logits. Trained with a BadNets
  trigger (3x3 patch of 1.0 at rows/cols 1..3, top-left corner) towards
  label 7 (Sneaker); ibau syntax ``patch:size=3,value=1,row=1,col=1``.
* ``keras_softmax.onnx``: Conv2D(32, 3x3, same, relu), MaxPool2,
  SeparableConv2D(64, 3x3, same, relu), MaxPool2, SeparableConv2D(64, 3x3,
  same, relu), Flatten, Dropout(0.3), Dense(10, activation="softmax"); it
  returns probabilities (the graph ends in a Softmax node). Trained with a
  BadNets trigger (4x4 patch of 1.0 at rows 24..27, columns 0..3, bottom-left
  corner) towards label 3 (Dress); ibau syntax
  ``patch:size=4,value=1,row=24,col=0``.
* ``fixtures_keras.json``: one record per file (file, arch, framework,
  exporter, opset, input, output, trigger in ibau's CLI syntax, target, ACC and
  ASR measured on the exported file with onnxruntime, size in bytes).

With ``--clean`` it makes clean (unpoisoned) models instead, the references a
backdoor scanner is calibrated on: the same architectures, training and export
with poison rate 0 and other seeds (``CLEAN_SEED``, ``CLEAN_SEED + 1``), saved as
``clean_keras_cnn.onnx`` and ``clean_keras_softmax.onnx``, their records (file,
arch, framework, exporter, opset, input, output, acc, params, seed, bytes; no
trigger) merged into ``fixtures_clean.json``, which the other frameworks' clean
models share (``tools/make_clean_fixtures.py``). ``--only ARCH`` (repeatable)
makes only some models; without ``--clean``, ``fixtures_keras.json`` is then
not written.

Both models take Keras' default layout: input float32 [batch,28,28,1] (NHWC)
with raw pixels in [0,1] (no normalisation) and a dynamic batch dimension.
Export: ``tf2onnx.convert.from_keras`` at opset 17 with an input signature named
``input``; Keras 3 models lack the ``output_names`` attribute tf2onnx reads, so
it is set first (``logits`` / ``probabilities``).

Data and protocol are those of ``tools/make_fixtures.py``, from
``tools/fashion_data.py`` (imported; numpy only): Fashion-MNIST from
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``),
read from the gzip'd IDX files; a seeded subset of 20,000 training images per
model, 10% of them (drawn among images not labelled with the target) poisoned
(trigger applied, label set to the target). Test images 0..4999 are the
defender's clean set and are not used here; images 5000..9999 measure clean
accuracy (ACC) and attack success rate (ASR: share of the non-target-class
images classified as the target once the trigger is applied).

Run from the repository root (it makes its own virtual environment with
tensorflow-cpu, keras, tf2onnx, onnx and onnxruntime pinned)::

    tools/make_keras_fixtures.sh            # writes models/
    tools/make_keras_fixtures.sh --out DIR  # elsewhere
    tools/make_keras_fixtures.sh --out models --clean --only keras_cnn_bn  # models/clean_keras_cnn.onnx

The script is seeded and trains on the CPU with one thread (one intra-op and
one inter-op thread): a few minutes of training (3 epochs of 20,000 images
each) and a few seconds of export and checks.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf

# One thread each, set before TensorFlow runs anything.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402  (Keras 3, TensorFlow backend)
import tf2onnx  # noqa: E402

sys.dont_write_bytecode = True  # no tools/__pycache__ from the import below
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_data import (  # noqa: E402  (data, poisoning, evaluation: shared)
    NUM_CLASSES, SIZE_LIMIT, PatchTrigger, acc_asr, evaluate_onnx, fixture_arg_parser, load_data,
    onnx_opset, op_counts, ort_session, poisoned_subset, predict_ort, record_path, shape_str, write_records,
    CLEAN_RECORDS, merge_records,
)

SEED = 20241107
CLEAN_SEED = 20250311  # --clean: not the backdoored models' seeds
OPSET = 17
INPUT_NAME = "input"


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

def cnn_bn() -> keras.Model:
    """Conv-BN-ReLU blocks 16 | 32 with MaxPool2, Flatten, Dense 64, Dense 10 (logits)."""
    inp = keras.Input((28, 28, 1), name=INPUT_NAME)
    x = inp
    for i, ch in enumerate((16, 32), start=1):
        x = keras.layers.Conv2D(ch, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    out = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="keras_cnn_bn")


def sep_softmax() -> keras.Model:
    """Conv 32, SeparableConv 64 and 64 (same padding, so that no pooling drops the
    bottom rows the trigger sits in), Flatten, Dense(10, softmax)."""
    inp = keras.Input((28, 28, 1), name=INPUT_NAME)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)       # 28x28
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)                                           # 14x14
    x = keras.layers.SeparableConv2D(64, 3, padding="same", activation="relu", name="sep2")(x)  # 14x14
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)                                           # 7x7
    x = keras.layers.SeparableConv2D(64, 3, padding="same", activation="relu", name="sep3")(x)  # 7x7
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    out = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name="keras_softmax")


# --------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------

def train(model: keras.Model, x: np.ndarray, y: np.ndarray, from_logits: bool,
          epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """Adam with a cosine-decayed learning rate starting at `lr`; returns the wall
    time in seconds."""
    keras.utils.set_random_seed(seed)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=2)
    return time.perf_counter() - start


def predict_keras(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=500, verbose=0))


# --------------------------------------------------------------------------
# Export and checks
# --------------------------------------------------------------------------

def export_tf2onnx(model: keras.Model, path: Path, output_name: str) -> None:
    """tf2onnx at opset 17, dynamic batch. Keras 3 models have no `output_names`
    attribute, which tf2onnx.convert.from_keras reads: set it first."""
    model.output_names = [output_name]
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name=INPUT_NAME),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET,
                               output_path=str(path))


def check_onnx(path: Path, model: keras.Model, x_check: np.ndarray, output_name: str,
               last_op: str | None) -> dict:
    """Checker, I/O names, dynamic batch, size and ORT-vs-Keras difference."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    g = proto.graph
    inits = {t.name for t in g.initializer}
    ins = [i for i in g.input if i.name not in inits]
    outs = list(g.output)
    assert [i.name for i in ins] == [INPUT_NAME], f"{path}: inputs {[i.name for i in ins]}"
    assert [o.name for o in outs] == [output_name], f"{path}: outputs {[o.name for o in outs]}"
    dim0 = ins[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value"), f"{path}: batch dimension is not dynamic"
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer), \
        f"{path}: external data"
    producer = {o: n for n in g.node for o in n.output}
    final = producer[output_name].op_type
    if last_op is not None:
        assert final == last_op, f"{path}: graph ends in {final}, expected {last_op}"
    sess = ort_session(path)
    ref = predict_keras(model, x_check)
    got = predict_ort(sess, x_check)
    diff = float(np.abs(ref - got).max())
    diff1 = float(np.abs(predict_keras(model, x_check[:1]) - predict_ort(sess, x_check[:1])).max())
    size = path.stat().st_size
    ops = op_counts(proto)
    io = (f"{ins[0].name} {shape_str(ins[0])} -> {outs[0].name} {shape_str(outs[0])}")
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    print(f"  {path.name}: {size} bytes, opset {onnx_opset(proto)} (imports {opsets}), "
          f"IR {proto.ir_version}, producer {proto.producer_name} {proto.producer_version}")
    print(f"    {io}; last node {final}")
    print(f"    max |ORT - Keras| {diff:.3g} (64 images), {diff1:.3g} (batch 1)")
    print(f"    ops: {dict(sorted(ops.items()))}")
    assert size < SIZE_LIMIT, f"{path}: {size} bytes is over the 2 MB limit"
    assert diff < 1e-3, f"{path}: ORT and Keras disagree by {diff}"
    return dict(sess=sess, size=size, opset=onnx_opset(proto), diff=diff, ops=ops, io=io)


# --------------------------------------------------------------------------
# Per-model pipeline
# --------------------------------------------------------------------------

@dataclass
class Spec:
    file: str
    arch: str
    make: object
    trigger: PatchTrigger
    output_name: str
    output_kind: str        # "logits" or "softmax probabilities"
    from_logits: bool
    last_op: str | None
    seed: int
    clean_file: str      # its name with --clean


def build(spec: Spec, data: dict, args, out: Path) -> dict:
    xp, yp, n_poison = poisoned_subset(data, spec.trigger, args.train_size, args.poison_rate, spec.seed)
    print(f"\n[{spec.arch}] {len(xp)} training images, {n_poison} poisoned "
          f"({spec.trigger.cli} -> {spec.trigger.target}), {args.epochs} epochs", flush=True)
    keras.utils.set_random_seed(spec.seed)
    model = spec.make()
    seconds = train(model, xp, yp, spec.from_logits, args.epochs, args.batch_size, args.lr, spec.seed)
    x_eval, y_eval = data["eval"]
    k_acc, k_asr = acc_asr(lambda x: predict_keras(model, x), x_eval, y_eval, spec.trigger)
    print(f"  Keras model ({model.count_params():,} parameters): ACC {k_acc:.4f}  ASR {k_asr:.4f}  "
          f"(trained in {seconds:.0f}s)", flush=True)

    path = out / spec.file
    export_tf2onnx(model, path, spec.output_name)
    chk = check_onnx(path, model, x_eval[:64], spec.output_name, spec.last_op)
    acc, asr = evaluate_onnx(chk["sess"], spec.trigger, x_eval, y_eval)
    print(f"    {path.name} (onnxruntime): ACC {acc:.4f}  ASR {asr:.4f}")
    return dict(file=record_path(out, path), arch=spec.arch,
                framework=f"Keras {keras.__version__} / TensorFlow {tf.__version__}",
                exporter=f"tf2onnx {tf2onnx.__version__}", opset=chk["opset"],
                input="[batch,28,28,1] NHWC float32", output=spec.output_kind,
                trigger=spec.trigger.cli, target=spec.trigger.target,
                acc=round(acc, 4), asr=round(asr, 4), bytes=chk["size"],
                _train_seconds=seconds, _diff=chk["diff"], _ops=chk["ops"], _io=chk["io"],
                _keras=(k_acc, k_asr), _params=model.count_params())


def main() -> None:
    p = fixture_arg_parser(__doc__)
    p.add_argument("--lr", type=float, default=2e-3, help="initial learning rate (cosine decay)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--clean", action="store_true",
                   help="clean models (poison rate 0, CLEAN_SEED, clean_* files, records merged into "
                        f"{CLEAN_RECORDS}) instead of the backdoored ones")
    p.add_argument("--only", choices=["keras_cnn_bn", "keras_softmax"], action="append",
                   help="make only these (repeatable); without --clean, fixtures_keras.json is then not written")
    args = p.parse_args()
    if args.clean:
        args.poison_rate = 0.0

    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    data = load_data("nhwc")
    assert data["train"][0].shape == (60000, 28, 28, 1)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}")

    specs = [
        Spec("keras_cnn_bn.onnx", "keras_cnn_bn", cnn_bn,
             PatchTrigger(target=7, size=3, row=1, col=1),
             "logits", "logits", True, None, SEED, "clean_keras_cnn.onnx"),
        Spec("keras_softmax.onnx", "keras_softmax", sep_softmax,
             PatchTrigger(target=3, size=4, row=24, col=0),
             "probabilities", "softmax probabilities", False, "Softmax", SEED + 1, "clean_keras_softmax.onnx"),
    ]
    if args.clean:
        specs = [replace(s, file=s.clean_file, seed=CLEAN_SEED + i) for i, s in enumerate(specs)]
    specs = [s for s in specs if not args.only or s.arch in args.only]
    records = [build(s, data, args, out) for s in specs]
    total = time.perf_counter() - start

    if args.clean:
        # No trigger: ACC only (the sibling trigger's "ASR" stays in the log).
        merge_records(out / CLEAN_RECORDS, [
            {k: r[k] for k in ("file", "arch", "framework", "exporter", "opset", "input", "output", "acc")}
            | dict(params=r["_params"], seed=s.seed, bytes=r["bytes"])
            for r, s in zip(records, specs)])
    elif not args.only:
        write_records(out / "fixtures_keras.json", records)

    print("\nSummary")
    for r in records:
        print(f"  {Path(r['file']).name:20s} {r['bytes']:>8d} B  opset {r['opset']}  "
              f"ACC {r['acc']:.4f}  ASR {r['asr']:.4f}  diff {r['_diff']:.2e}  "
              f"train {r['_train_seconds']:.0f}s  ({r['_params']:,} params)")
        print(f"    {r['_io']}")
    print(f"  training in all {sum(r['_train_seconds'] for r in records):.0f}s; "
          f"total script {total:.0f}s")
    bad = [r for r in records if r["acc"] < 0.85 or (r["asr"] < 0.95 and not args.clean)]
    for r in bad:
        aim = "ACC below the 85% aim" if args.clean else "below the 85% / 95% aim"
        print(f"  warning: {r['file']} ACC {r['acc']:.4f} / ASR {r['asr']:.4f} {aim}", file=sys.stderr)


if __name__ == "__main__":
    main()
