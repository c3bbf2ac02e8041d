"""Data, triggers and ONNX Runtime evaluation shared by the fixture scripts.

``tools/make_fixtures.py``, ``make_torch_fixtures.py``, ``make_keras_fixtures.py``
and ``make_jax_fixtures.py`` train backdoored Fashion-MNIST classifiers with
different frameworks, each in its own virtual environment, under one protocol;
this module is that protocol, written once:

* the data: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), read from the gzip'd IDX files as
  float32 pixels in [0,1] (no normalisation) in the layout the framework wants
  (``nchw`` [N,1,28,28], ``nhwc`` [N,28,28,1] or ``hw`` [N,28,28]);
* the poisoning: a seeded subset of the training images, a share of them (drawn
  among images not labelled with the target) carrying the trigger and
  relabelled with the target;
* the BadNets patch trigger and its spelling in ibau's ``--trigger`` syntax;
* the evaluation (the I-BAU authors' protocol): test images 0..4999 are the
  defender's clean set and are never used by the scripts; images 5000..9999
  give ACC (clean accuracy) and ASR (share of the non-target-class images
  classified as the target once the trigger is applied), measured with
  onnxruntime on the exported file;
* the shared command-line options, small ONNX helpers (op counts, opset,
  shapes) and the ``fixtures*.json`` writer.

It needs numpy only: onnxruntime is imported when a session is opened, and the
ONNX helpers take already-loaded protos, so every venv (torch, TensorFlow,
JAX) can import it. Every function keeps the exact seeds, orders and dtypes the
checked-in fixtures were made with: changing one changes the fixtures.
"""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
NUM_CLASSES = 10
SIZE_LIMIT = 2 * 1024 * 1024  # every fixture must stay under 2 MB
EVAL_START = 5000  # test images 0..4999: the defender's clean set; 5000..9999: ACC/ASR


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file (the MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if dtype_code != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type {dtype_code:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_split(split: str, layout: str = "nchw",
               label_dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Images of `split` ("train" or "t10k") as float32 in [0,1], [N,1,28,28]
    (layout "nchw"), [N,28,28,1] ("nhwc") or [N,28,28] ("hw"), and labels [N]."""
    images = read_idx(DATA_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(DATA_DIR / f"{split}-labels-idx1-ubyte.gz")
    x = images.astype(np.float32) / 255.0
    if layout == "nchw":
        x = x[:, None, :, :]
    elif layout == "nhwc":
        x = x[:, :, :, None]
    elif layout != "hw":
        raise ValueError(f"unknown layout {layout!r}")
    return x, labels.astype(label_dtype)


def load_data(layout: str = "nchw", label_dtype: type = np.int64) -> dict:
    """{"train": all 60,000 training images and labels, "eval": test images
    5000..9999 and labels}, as load_split gives them."""
    x_tr, y_tr = load_split("train", layout, label_dtype)
    x_te, y_te = load_split("t10k", layout, label_dtype)
    assert len(x_tr) == 60000 and len(x_te) == 10000 and x_tr.shape[1:] == x_te.shape[1:]
    return {"train": (x_tr, y_tr), "eval": (x_te[EVAL_START:], y_te[EVAL_START:])}


# --------------------------------------------------------------------------
# Triggers and poisoning
# --------------------------------------------------------------------------

@dataclass
class PatchTrigger:
    """A BadNets square patch of `value` (top-left corner at row, col), its target
    label and its ibau CLI spelling. Images are [N,1,28,28] with channels_first,
    else [N,28,28,1] or [N,28,28] (rows and columns are axes 1 and 2)."""

    target: int
    size: int
    row: int
    col: int
    value: float = 1.0
    channels_first: bool = False

    @property
    def cli(self) -> str:
        return f"patch:size={self.size},value={self.value:g},row={self.row},col={self.col}"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return a triggered copy of images x."""
        y = x.copy()
        rows, cols = slice(self.row, self.row + self.size), slice(self.col, self.col + self.size)
        if self.channels_first:
            y[:, :, rows, cols] = self.value
        else:
            y[:, rows, cols] = self.value
        return y


def poison(x: np.ndarray, y: np.ndarray, trigger, rate: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Apply the trigger to `rate` of the samples (drawn among those not already
    labelled with the target) and relabel them with the target. `trigger` is
    anything with `target` and `apply(x)`."""
    x, y = x.copy(), y.copy()
    candidates = np.flatnonzero(y != trigger.target)
    n = int(round(rate * len(x)))
    idx = rng.choice(candidates, size=n, replace=False)
    x[idx] = trigger.apply(x[idx])
    y[idx] = trigger.target
    return x, y, n


def poisoned_subset(data: dict, trigger, size: int, rate: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The training set of one fixture: a random subset of `size` of
    data["train"], then `rate` of it poisoned, both drawn from
    np.random.default_rng(seed). Returns images, labels and the poisoned count."""
    rng = np.random.default_rng(seed)
    x_train, y_train = data["train"]
    subset = rng.permutation(len(x_train))[:size]
    return poison(x_train[subset], y_train[subset], trigger, rate, rng)


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------

def acc_asr(predict, x_eval: np.ndarray, y_eval: np.ndarray, trigger,
            to_input=None) -> tuple[float, float]:
    """ACC on the clean eval images; ASR on the triggered non-target ones.
    `predict` maps model inputs to scores [N,10]; `to_input`, if given, turns
    images (after the trigger) into model inputs."""
    prepare = to_input if to_input is not None else (lambda x: x)
    acc = float((predict(prepare(x_eval)).argmax(1) == y_eval).mean())
    keep = y_eval != trigger.target
    asr = float((predict(prepare(trigger.apply(x_eval[keep]))).argmax(1) == trigger.target).mean())
    return acc, asr


def ort_session(path: Path, threads: int = 1):
    """An onnxruntime CPU session with `threads` intra-op threads and one inter-op."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict_ort(sess, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Outputs as float32, feeding the input in the dtype the file declares
    (float16 or float32), `batch` images at a time."""
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    return np.concatenate([sess.run(None, {inp.name: x[i:i + batch].astype(dtype)})[0].astype(np.float32)
                           for i in range(0, len(x), batch)])


def evaluate_onnx(model, trigger, x_eval: np.ndarray, y_eval: np.ndarray, to_input=None,
                  threads: int = 1) -> tuple[float, float]:
    """ACC and ASR of an ONNX file (a path, or an open onnxruntime session) on
    x_eval / y_eval: data["eval"] of load_data, test images 5000..9999."""
    sess = ort_session(model, threads) if isinstance(model, (str, Path)) else model
    return acc_asr(lambda x: predict_ort(sess, x), x_eval, y_eval, trigger, to_input)


# --------------------------------------------------------------------------
# ONNX helpers (on loaded protos: no onnx import needed here) and records
# --------------------------------------------------------------------------

def op_counts(proto) -> dict[str, int]:
    """Node count per op type, in graph order of first appearance."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def onnx_opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def shape_str(value) -> str:
    """A ValueInfoProto's shape as "[B,28,28,1]" (symbolic dims by name, "?" if unknown)."""
    dims = [d.dim_param if d.dim_param else str(d.dim_value) if d.HasField("dim_value") else "?"
            for d in value.type.tensor_type.shape.dim]
    return f"[{','.join(dims)}]"


def fixture_arg_parser(doc: str, batch_size: int = 64) -> argparse.ArgumentParser:
    """The options every fixture script takes (--out, --train-size, --poison-rate,
    --batch-size), described by the first paragraph of the script's docstring."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models"), help="output folder (default: models)")
    p.add_argument("--train-size", type=int, default=20000, help="training images per model")
    p.add_argument("--poison-rate", type=float, default=0.1, help="share of poisoned training images")
    p.add_argument("--batch-size", type=int, default=batch_size)
    return p


def record_path(out: Path, path: Path) -> str:
    """How a record names a file: "models/<name>" when written to models/, else the path."""
    return f"{out.name}/{path.name}" if out.name == "models" else str(path)


def write_records(path: Path, records: list[dict]) -> None:
    """Write records as a JSON list, leaving out the keys that start with "_"."""
    path.write_text(json.dumps(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in records], indent=2) + "\n")


# The clean (unpoisoned) fixtures of every framework share one record file,
# written by several scripts in several venvs: each merges its records in.
CLEAN_RECORDS = "fixtures_clean.json"


def merge_records(path: Path, records: list[dict]) -> None:
    """Write records into the JSON list at `path`, keeping the records already
    there for other files: a record replaces the one with the same "file" in
    place, new ones are appended. Keys starting with "_" are left out."""
    old = json.loads(path.read_text()) if path.exists() else []
    new = {r["file"]: r for r in records}
    merged = [new.pop(r["file"], r) for r in old] + list(new.values())
    write_records(path, merged)
