"""Make CLEAN (unpoisoned) PyTorch Fashion-MNIST classifiers, the references a
backdoor scanner is calibrated on: same architectures and training as the
backdoored fixtures, with no poisoned image and other seeds.

What it makes (under --out, default ``models/``):

* ``clean_vgg.onnx``: the VGG of ``tools/make_fixtures.py`` (``make_fixtures.VGG``),
  trained by its ``train`` with its settings (20,000 images, batch 64, Adam
  one-cycle peaking at 0.003, 2 epochs, two threads), seed ``CLEAN_SEED``.
* ``clean_resnet.onnx``: its ``SmallResNet``, likewise (3 epochs), seed
  ``CLEAN_SEED + 1``.
* ``clean_mobilenet.onnx`` (``--only mobilenet``; not made by default): the
  MobileNet-style CNN of ``tools/make_torch_fixtures.py``, trained with that
  script's settings (5 epochs, peak lr 0.005, one thread), seed ``CLEAN_SEED + 2``.
* ``fixtures_clean.json``: one record per file (file, arch, framework,
  exporter, opset, input, output, acc, params, seed, bytes; no trigger or
  target). The file is shared with the clean models of the other frameworks
  (``tools/make_keras_fixtures.sh --clean``, ``tools/make_jax_fixtures.sh
  --clean``): records are merged in by file name, the others are kept.

All are exported like the backdoored ``*_legacy.onnx`` files
(``make_fixtures.export_legacy``: ``torch.onnx.export(..., dynamo=False,
opset_version=17)``, input ``input`` float32 [batch,1,28,28], output ``logits``,
dynamic batch) and checked by ``make_fixtures.check_onnx`` (names, dynamic
batch, no external data, under 2 MB, onnxruntime within 1e-3 of PyTorch).

Nothing here is copied: models, training, export and checks are imported from
``make_fixtures`` / ``make_torch_fixtures``, data from ``fashion_data``, and the
training subset is ``fashion_data.poisoned_subset`` at rate 0 (a seeded subset
of 20,000 of the 60,000 training images, nothing poisoned). ACC is measured with
onnxruntime on the exported file on test images 5000..9999 (0..4999 are the
defender's clean set and are not used). The log also prints, for information
only, the share of triggered non-target images the clean model assigns to the
target of its backdoored sibling's trigger (the clean model's "ASR", which
should be near chance). The backdoored fixtures and their records are never
touched.

Run from the repository root, after ``tools/setup.sh``::

    .venv/bin/python tools/make_clean_fixtures.py                    # vgg, resnet
    .venv/bin/python tools/make_clean_fixtures.py --only mobilenet   # mobilenet
    .venv/bin/python tools/make_clean_fixtures.py --out DIR          # elsewhere
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import onnx
import onnxruntime as ort
import torch

sys.dont_write_bytecode = True  # no tools/__pycache__ from the imports below
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data as fd  # noqa: E402
import make_fixtures as mf  # noqa: E402
import make_torch_fixtures as mt  # noqa: E402

# Not the backdoored fixtures' seeds (make_fixtures 20240601/+1,
# make_torch_fixtures 20240701/+1): a different training subset and initialisation.
CLEAN_SEED = 20250301
ARCHS = ("vgg", "resnet", "mobilenet")


def make_one(arch: str, out: Path, data: dict, args) -> dict:
    """Train one clean model, export it with the legacy exporter, check it and
    measure its ACC with onnxruntime; returns its record."""
    if arch == "vgg":
        seed, threads, make_model, trigger = CLEAN_SEED, 2, mf.VGG, mf.badnets_trigger()
        targs = SimpleNamespace(train_size=args.train_size, poison_rate=0.0, batch_size=args.batch_size,
                                lr=args.lr, vgg_epochs=args.vgg_epochs)
    elif arch == "resnet":
        # The blend trigger only for the informative "ASR". mf.blend_trigger also
        # saves its pattern: into a scratch folder, so models/ is not written.
        seed, threads, make_model = CLEAN_SEED + 1, 2, mf.SmallResNet
        with tempfile.TemporaryDirectory() as scratch:
            trigger = mf.blend_trigger(Path(scratch))
        targs = SimpleNamespace(train_size=args.train_size, poison_rate=0.0, batch_size=args.batch_size,
                                lr=args.lr, resnet_epochs=args.resnet_epochs)
    elif arch == "mobilenet":
        seed, threads, trigger = CLEAN_SEED + 2, 1, mt.mobilenet_trigger()
        make_model = lambda: mt.ChannelsLast(mt.SmallMobileNet())  # noqa: E731  (as make_torch_fixtures)
        targs = SimpleNamespace(train_size=args.train_size, poison_rate=0.0, batch_size=args.batch_size,
                                lr=args.mobilenet_lr, mobilenet_epochs=args.mobilenet_epochs)
    else:
        raise ValueError(arch)

    torch.set_num_threads(threads)
    model, info = mf.build_backdoored(arch, make_model, trigger, data, targs, seed)
    assert info["n_poison"] == 0, info
    if arch == "mobilenet":
        model = model.model.to(memory_format=torch.contiguous_format).eval()

    x_eval, y_eval = data["eval"]
    path = out / f"clean_{arch}.onnx"
    mf.export_legacy(model, path)
    chk = mf.check_onnx(path, model, x_eval[:64])
    acc, sibling_asr = fd.evaluate_onnx(chk["sess"], trigger, x_eval, y_eval)
    print(f"    {path.name} (onnxruntime): ACC {acc:.4f}; "
          f"{trigger.cli} -> {trigger.target} on this clean model: {sibling_asr:.4f} (information only)",
          flush=True)
    return dict(file=fd.record_path(out, path), arch=arch, framework=f"PyTorch {torch.__version__.split('+')[0]}",
                exporter="torch.onnx legacy", opset=chk["opset"],
                input="[batch,1,28,28] NCHW float32", output="logits",
                acc=round(acc, 4), params=info["params"], seed=seed, bytes=chk["size"],
                _train_seconds=info["train_seconds"], _torch_acc=info["torch_acc"],
                _sibling_asr=sibling_asr, _diff=chk["diff"], _threads=threads, _epochs=info["epochs"])


def main() -> None:
    p = fd.fixture_arg_parser(__doc__)
    p.set_defaults(poison_rate=0.0)
    p.add_argument("--lr", type=float, default=3e-3, help="peak lr of vgg and resnet (as make_fixtures)")
    p.add_argument("--vgg-epochs", type=int, default=2)
    p.add_argument("--resnet-epochs", type=int, default=3)
    p.add_argument("--mobilenet-epochs", type=int, default=5)
    p.add_argument("--mobilenet-lr", type=float, default=5e-3)
    p.add_argument("--only", choices=ARCHS, action="append",
                   help="make only these (repeatable; default: vgg and resnet)")
    args = p.parse_args()
    if args.poison_rate != 0.0:
        p.error("clean fixtures are not poisoned: --poison-rate must stay 0")

    start = time.perf_counter()
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = fd.load_data("nchw")
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}", flush=True)

    archs = [a for a in ARCHS if a in (args.only or ["vgg", "resnet"])]
    records = [make_one(a, out, data, args) for a in archs]
    fd.merge_records(out / fd.CLEAN_RECORDS, records)

    print("\nSummary")
    for r in records:
        print(f"  {Path(r['file']).name:22s} {r['bytes']:>9d} B  opset {r['opset']}  ACC {r['acc']:.4f} "
              f"(PyTorch {r['_torch_acc']:.4f}, sibling trigger {r['_sibling_asr']:.4f})  "
              f"{r['params']:,} params  seed {r['seed']}  {r['_epochs']} epochs, {r['_threads']} thread(s), "
              f"trained {r['_train_seconds']:.0f}s  diff {r['_diff']:.2e}")
    print(f"  total script {time.perf_counter() - start:.0f}s; wrote {out / fd.CLEAN_RECORDS}")


if __name__ == "__main__":
    main()
