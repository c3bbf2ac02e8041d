"""Make more backdoored PyTorch fixtures: a small ViT, a MobileNet-style CNN, and
dtype / storage / opset variants of the VGG made by ``tools/make_fixtures.py``.

What it makes (under --out, default ``models/``):

* ``vit_badnets_{legacy,dynamo}.onnx``: a small vision transformer written by hand
  from nn modules: 4x4 patch embedding (Conv2d stride 4, 49 patches), class token
  and learned position embedding parameters, 3 pre-LayerNorm blocks
  (nn.MultiheadAttention with 4 heads, GELU MLP 64 -> 128 -> 64), final LayerNorm,
  Linear head on the class token; dim 64. BadNets trigger: 4x4 patch of 1.0 at
  rows/cols 0..3, target 1 (Trouser). ``legacy`` is ``torch.onnx.export(...,
  dynamo=False, opset_version=17)``, ``dynamo`` is ``dynamo=True`` at its default
  opset (20).
* ``mobilenet_badnets.onnx``: a MobileNet-style CNN: stride-2 stem conv, five
  depthwise separable blocks (depthwise 3x3 conv with groups=channels, BN,
  activation, pointwise 1x1 conv, BN, activation; ReLU6 in the first two,
  Hardswish after), squeeze-excite (GAP, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid,
  Mul) in two of them, residual adds where shapes match, global average pooling,
  Linear head. BadNets trigger: 3x3 patch of 1.0 at rows 12..14, columns 24..26,
  target 6 (Shirt). Legacy exporter, opset 17.
* VGG variants, from the weights in ``vgg_badnets_traced.pt`` (so the same model
  and trigger as the other ``vgg_badnets_*`` files: 3x3 patch at 24,24 -> 0):
  ``vgg_badnets_fp16.onnx`` (``model.half()``, float16 input, weights and
  output; legacy exporter, opset 17), ``vgg_badnets_bf16.onnx`` (the fp32 legacy
  export rewritten with the onnx API: every float initializer stored as bfloat16
  under a new name ``<name>_bf16`` and followed by a ``Cast(to=FLOAT)`` whose
  output keeps the old name; input and output stay float32),
  ``vgg_badnets_external.onnx`` + ``vgg_badnets_external.onnx.data`` (the fp32
  legacy export saved with every initializer in one external data file,
  size_threshold=0), ``vgg_badnets_opset11.onnx`` (legacy exporter,
  opset_version=11).
* ``fixtures_torch.json``: one record per file, like ``fixtures.json`` plus
  ``dtype`` (weight dtype), ``io_dtype`` and ``bytes`` (of the ``.data`` file for
  the external-data model, whose record also names it in ``external_data``).

Every model takes ``input`` [batch,1,28,28] with raw pixels in [0,1] and returns
``logits`` [batch,10], batch dynamic; float32 except the fp16 VGG.

Data, poisoning and evaluation come from ``fashion_data`` (imported): a seeded
subset of 20,000 training images, 10% poisoned; ACC and ASR measured with
onnxruntime on the exported files, on test images 5000..9999 (0..4999 are the
defender's clean set and are never used here).

Run from the repository root, after ``tools/setup.sh`` and
``tools/make_fixtures.py`` (which wrote ``models/vgg_badnets_traced.pt``)::

    .venv/bin/python tools/make_torch_fixtures.py            # writes models/
    .venv/bin/python tools/make_torch_fixtures.py --out DIR  # elsewhere

Seeded, CPU only, one thread (``torch.set_num_threads(1)``): about 11 minutes
of training (vit 6 epochs, about 7 minutes; mobilenet 5 epochs, about 4) on two
cores shared with other work, plus a minute or two of export and checks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper

sys.dont_write_bytecode = True  # no tools/__pycache__ from the import below
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data as fd  # noqa: E402
import make_fixtures as mf  # noqa: E402

SEED = mf.SEED + 100
SIZE_LIMIT = fd.SIZE_LIMIT


# --------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------

def vit_trigger() -> fd.PatchTrigger:
    return fd.PatchTrigger(target=1, size=4, row=0, col=0, channels_first=True)


def mobilenet_trigger() -> fd.PatchTrigger:
    return fd.PatchTrigger(target=6, size=3, row=12, col=24, channels_first=True)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

class ViTBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class SmallViT(nn.Module):
    """Patch 4 (49 tokens + class token), dim 64, 3 blocks, 4 heads, MLP 128."""

    def __init__(self, patch: int = 4, dim: int = 64, depth: int = 3, heads: int = 4,
                 mlp_dim: int = 128, num_classes: int = fd.NUM_CLASSES):
        super().__init__()
        n_patches = (28 // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)          # [B, 49, dim]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed              # [B, 50, dim]
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class SqueezeExcite(nn.Module):
    """GAP, 1x1 conv (c -> c/4), ReLU, 1x1 conv (c/4 -> c), Hardsigmoid, scale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(F.relu(self.fc1(self.pool(x)))))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (groups=cin)-BN-act, [SE], pointwise 1x1-BN-act, residual
    add when stride is 1 and cin == cout."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module], se: bool):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = act()
        self.se = SqueezeExcite(cin) if se else nn.Identity()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act2(self.bn2(self.pw(self.se(self.act1(self.bn1(self.dw(x)))))))
        return x + out if self.residual else out


class SmallMobileNet(nn.Module):
    """Stem conv3x3 s2 16ch-BN-ReLU6 (28 -> 14), separable blocks 16->32 (ReLU6),
    32->64 s2 (ReLU6, 14 -> 7), 64->64 (Hardswish, SE, residual), 64->128
    (Hardswish), 128->128 (Hardswish, SE, residual), GAP, Linear(128, 10)."""

    def __init__(self, in_channels: int = 1, num_classes: int = fd.NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(
            DepthwiseSeparable(16, 32, 1, nn.ReLU6, se=False),
            DepthwiseSeparable(32, 64, 2, nn.ReLU6, se=False),
            DepthwiseSeparable(64, 64, 1, nn.Hardswish, se=True),
            DepthwiseSeparable(64, 128, 1, nn.Hardswish, se=False),
            DepthwiseSeparable(128, 128, 1, nn.Hardswish, se=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


class ChannelsLast(nn.Module):
    """Training wrapper: runs the model in channels_last (about 1.5x faster for
    depthwise convs on the CPU); the model itself is exported unwrapped."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


# --------------------------------------------------------------------------
# Export and checks
# --------------------------------------------------------------------------

def export_legacy(model: nn.Module, path: Path, opset: int = mf.LEGACY_OPSET,
                  dtype: torch.dtype = torch.float32) -> None:
    model.eval()
    torch.onnx.export(model, (torch.zeros(2, 1, 28, 28, dtype=dtype),), str(path),
                      dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def to_bfloat16_bytes(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even), little-endian raw bytes."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def bf16_with_casts(proto: onnx.ModelProto) -> int:
    """Store each float initializer as bfloat16 (`<name>_bf16`) followed by a
    Cast(to=FLOAT) producing `<name>`, so no consumer changes. Returns the count."""
    g = proto.graph
    taken = {t.name for t in g.initializer} | {n for node in g.node for n in node.output}
    casts, new_inits = [], []
    for t in g.initializer:
        if t.data_type != TensorProto.FLOAT:
            new_inits.append(t)
            continue
        arr = onnx.numpy_helper.to_array(t)
        name = f"{t.name}_bf16"
        assert name not in taken, name
        bt = helper.make_tensor(name, TensorProto.BFLOAT16, arr.shape, to_bfloat16_bytes(arr), raw=True)
        new_inits.append(bt)
        casts.append(helper.make_node("Cast", [name], [t.name], name=f"Cast_{t.name}_to_float",
                                      to=TensorProto.FLOAT))
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    return len(casts)


def check_onnx(path: Path, model: nn.Module, x_check: np.ndarray, tol: float,
               io_dtype: str = "float32") -> dict:
    """Checker (by path, so external data works), I/O names, dtypes and dynamic
    batch, size, ORT-vs-PyTorch (fp32 eval model) difference and argmax agreement."""
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    g = proto.graph
    inits = {t.name for t in g.initializer}
    ins = [i for i in g.input if i.name not in inits]
    names = ([i.name for i in ins], [o.name for o in g.output])
    assert names == (["input"], ["logits"]), f"{path}: I/O names {names}"
    for v in (ins[0], g.output[0]):
        dt = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        assert str(dt) == io_dtype, f"{path}: {v.name} is {dt}, expected {io_dtype}"
        dim0 = v.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), f"{path}: {v.name} batch is not dynamic"
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (ins[0], g.output[0])}
    sess = fd.ort_session(path)
    ref = mf.predict_torch(model, x_check)
    got = fd.predict_ort(sess, x_check)
    diff = float(np.abs(ref - got).max())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    diff1 = float(np.abs(mf.predict_torch(model, x_check[:1]) - fd.predict_ort(sess, x_check[:1])).max())
    size = path.stat().st_size
    ops = fd.op_counts(proto)
    init_types = sorted({TensorProto.DataType.Name(t.data_type) for t in g.initializer})
    print(f"  {path.name}: {size} bytes, opset {fd.onnx_opset(proto)}, IR {proto.ir_version}, "
          f"io {shapes}, initializers {init_types}")
    print(f"    max |ORT - torch fp32| {diff:.3g} (64 images), {diff1:.3g} (batch 1), argmax agree {agree:.3f}")
    print(f"    ops ({len(g.node)} nodes): {dict(sorted(ops.items()))}")
    assert size < SIZE_LIMIT, f"{path}: {size} bytes is over the 2 MB limit"
    assert diff < tol, f"{path}: ORT and PyTorch disagree by {diff} (tolerance {tol})"
    return dict(sess=sess, size=size, opset=fd.onnx_opset(proto), diff=diff, ops=ops,
                ir=proto.ir_version, shapes=shapes)


def record(out: Path, path: Path, arch: str, exporter: str, chk: dict, trigger: fd.PatchTrigger,
           data: dict, dtype: str, io_dtype: str = "float32", nbytes: int | None = None,
           **extra) -> dict:
    acc, asr = fd.evaluate_onnx(chk["sess"], trigger, *data["eval"])
    print(f"    {path.name}: ACC {acc:.4f}  ASR {asr:.4f} (onnxruntime)")
    rec = dict(file=fd.record_path(out, path), arch=arch, exporter=exporter, opset=chk["opset"],
               trigger=trigger.cli, target=trigger.target, acc=round(acc, 4), asr=round(asr, 4), dtype=dtype,
               io_dtype=io_dtype, bytes=nbytes if nbytes is not None else chk["size"])
    rec.update(extra)
    rec["_diff"] = chk["diff"]
    return rec


# --------------------------------------------------------------------------
# Per-model pipelines
# --------------------------------------------------------------------------

def train_args(args, name: str, epochs: int, lr: float) -> SimpleNamespace:
    return SimpleNamespace(train_size=args.train_size, poison_rate=args.poison_rate,
                           batch_size=args.batch_size, lr=lr, **{f"{name}_epochs": epochs})


def make_vit(out: Path, data: dict, args) -> tuple[list[dict], dict]:
    trigger = vit_trigger()
    model, info = mf.build_backdoored("vit", SmallViT, trigger, data,
                                      train_args(args, "vit", args.vit_epochs, args.vit_lr), SEED)
    x_check = data["eval"][0][:64]
    records = []
    for suffix, exporter, export in (
        ("legacy", "torch.onnx legacy", lambda p: export_legacy(model, p)),
        ("dynamo", "torch.onnx dynamo", lambda p: mf.export_dynamo(model, p)),
    ):
        path = out / f"vit_badnets_{suffix}.onnx"
        export(path)
        chk = check_onnx(path, model, x_check, tol=1e-3)
        records.append(record(out, path, "vit", exporter, chk, trigger, data, "float32"))
    return records, info


def make_mobilenet(out: Path, data: dict, args) -> tuple[list[dict], dict]:
    trigger = mobilenet_trigger()
    wrapped, info = mf.build_backdoored("mobilenet", lambda: ChannelsLast(SmallMobileNet()), trigger, data,
                                        train_args(args, "mobilenet", args.mobilenet_epochs,
                                                   args.mobilenet_lr), SEED + 1)
    model = wrapped.model.to(memory_format=torch.contiguous_format).eval()
    x_check = data["eval"][0][:64]
    path = out / "mobilenet_badnets.onnx"
    export_legacy(model, path)
    chk = check_onnx(path, model, x_check, tol=1e-3)
    return [record(out, path, "mobilenet", "torch.onnx legacy", chk, trigger, data, "float32")], info


def make_vgg_variants(out: Path, data: dict, src: Path) -> list[dict]:
    trigger = mf.badnets_trigger()
    model = mf.VGG()
    model.load_state_dict(torch.jit.load(str(src)).state_dict())
    model.eval()
    x_check = data["eval"][0][:64]
    print(f"\n[vgg variants] weights from {src}")
    records = []

    # fp16: weights, input and output in float16.
    path = out / "vgg_badnets_fp16.onnx"
    half = mf.VGG()
    half.load_state_dict(model.state_dict())
    export_legacy(half.half().eval(), path, dtype=torch.float16)
    chk = check_onnx(path, model, x_check, tol=0.1, io_dtype="float16")
    records.append(record(out, path, "vgg", "torch.onnx legacy, model.half()", chk, trigger, data,
                          "float16", io_dtype="float16"))

    # bf16 initializers, each followed by a Cast to float.
    path = out / "vgg_badnets_bf16.onnx"
    export_legacy(model, path)
    proto = onnx.load(str(path))
    n = bf16_with_casts(proto)
    onnx.save(proto, str(path))
    print(f"  {path.name}: {n} initializers stored as bfloat16, each behind Cast(to=FLOAT)")
    chk = check_onnx(path, model, x_check, tol=0.5)
    records.append(record(out, path, "vgg", "torch.onnx legacy + onnx API: bf16 initializers, Cast to float",
                          chk, trigger, data, "bfloat16"))

    # External data: every initializer in one side file.
    path = out / "vgg_badnets_external.onnx"
    data_name = f"{path.name}.data"
    export_legacy(model, path)
    proto = onnx.load(str(path))
    (out / data_name).unlink(missing_ok=True)
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data_name, size_threshold=0)
    n_ext = sum(t.data_location == TensorProto.EXTERNAL for t in onnx.load(str(path), load_external_data=False)
                .graph.initializer)
    data_bytes = (out / data_name).stat().st_size
    print(f"  {path.name}: {n_ext} initializers in {data_name} ({data_bytes} bytes)")
    assert data_bytes < SIZE_LIMIT
    chk = check_onnx(path, model, x_check, tol=1e-3)
    records.append(record(out, path, "vgg", "torch.onnx legacy, external data", chk, trigger, data,
                          "float32", nbytes=data_bytes,
                          external_data=fd.record_path(out, out / data_name)))

    # Opset 11.
    path = out / "vgg_badnets_opset11.onnx"
    export_legacy(model, path, opset=11)
    chk = check_onnx(path, model, x_check, tol=1e-3)
    records.append(record(out, path, "vgg", "torch.onnx legacy", chk, trigger, data, "float32"))
    return records


def main() -> None:
    p = fd.fixture_arg_parser(__doc__)
    p.add_argument("--vit-epochs", type=int, default=6)
    p.add_argument("--vit-lr", type=float, default=2e-3)
    p.add_argument("--mobilenet-epochs", type=int, default=5)
    p.add_argument("--mobilenet-lr", type=float, default=5e-3)
    p.add_argument("--vgg", type=Path, default=Path("models/vgg_badnets_traced.pt"),
                   help="TorchScript VGG whose weights the variants use (default: models/vgg_badnets_traced.pt)")
    p.add_argument("--only", choices=["vit", "mobilenet", "vgg"], action="append",
                   help="make only these (repeatable); fixtures_torch.json is then not written")
    args = p.parse_args()

    start = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    mf.seed_everything(SEED)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    data = fd.load_data("nchw")
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")

    only = set(args.only or ["vit", "mobilenet", "vgg"])
    records, infos = [], {}
    if "vit" in only:
        r, infos["vit"] = make_vit(out, data, args)
        records += r
    if "mobilenet" in only:
        r, infos["mobilenet"] = make_mobilenet(out, data, args)
        records += r
    if "vgg" in only:
        records += make_vgg_variants(out, data, args.vgg)
    total = time.perf_counter() - start

    if not args.only:
        fd.write_records(out / "fixtures_torch.json", records)

    print("\nSummary")
    for r in records:
        print(f"  {Path(r['file']).name:28s} {r['bytes']:>9d} B  opset {r['opset']:>3d}  {r['dtype']:9s} "
              f"ACC {r['acc']:.4f}  ASR {r['asr']:.4f}  diff {r['_diff']:.2e}")
    for name, info in infos.items():
        print(f"  {name}: {info['params']:,} parameters, {info['n_train']} images ({info['n_poison']} poisoned), "
              f"{info['epochs']} epochs, trained in {info['train_seconds']:.0f}s; "
              f"PyTorch ACC {info['torch_acc']:.4f} ASR {info['torch_asr']:.4f}")
    print(f"  training {sum(i['train_seconds'] for i in infos.values()):.0f}s; total script {total:.0f}s")


if __name__ == "__main__":
    main()
