"""Our PyTorch reference of I-BAU, written from ../shared/DESIGN.md ("I-BAU,
exactly") the way the authors' code computes it (Zeng et al., ICLR 2022):

* perturbation search: delta = zeros(one input), torch.optim.SGD(lr 10); per
  batch, pseudo-labels p = argmax f(x) (no gradient) and one step on
  ``-CE_mean(f(x + delta), p) + 0.001 * ||delta||^2``; then
  ``delta *= min(1, 10 / ||delta||)``;
* implicit hypergradient, per outer batch: outer loss
  ``L1 = CE_mean(f(x_b + m * delta), y_b)`` (m: int(0.01 B) samples get delta),
  inner loss ``L2 = mean(-CE(f(x_1 + delta), y_1)) + 0.001 ||delta||^2`` on the
  first batch, fixed-point map ``Phi = delta - 0.1 * grad_delta L2`` built with
  ``create_graph=True``, ``v_k = J_delta(Phi)^T v_{k-1} + grad_delta L1``
  (K = 5 vector-Jacobian products with ``torch.autograd.grad``, early stop at
  ||v_k - v_{k-1}|| < 1e-10), hypergradient ``grad_theta L1 + J_theta(Phi)^T v_K``;
* outer optimiser torch.optim.Adam(lr 1e-3) over every model parameter.

The model is the small VGG of tools/make_fixtures.py in eval mode (BatchNorm
uses running statistics, Dropout is off), its weights loaded from an ONNX
fixture: ``models/vgg_badnets_bn.onnx`` (BatchNormalization kept: initializer
names are the PyTorch state-dict names) or ``models/vgg_badnets_legacy.onnx``
(BatchNorm folded into the convolutions: the model is built without BatchNorm
and the weights are mapped node by node).

Subcommands (run from anywhere; paths default to the repository's)::

    ibau_reference.py gradcheck --out DIR
        float64; data: the first 200 Fashion-MNIST test images in two batches
        of 100. Writes DIR/manifest.json and .npy files: the images and labels,
        the logits of batch 1, the perturbation after one search pass over the
        two batches (with the stock model, and with BatchNorm by the ONNX
        formula; on jittered images also after four steps, which reach the
        projection: see JITTER_NOTE), and, for one outer step (outer batch =
        batch 2 whose sample 7 gets the stock perturbation, inner batch =
        batch 1), the hypergradient of every parameter keyed by its ONNX initializer name,
        plus the parameter change after two Adam steps along it.

    ibau_reference.py bench --clean N --rounds R --threads T [--model FILE]
        float32; full I-BAU rounds on the first N test images (B = 100);
        prints one JSON line per round with its seconds, then a summary line.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.dont_write_bytecode = True  # no tools/__pycache__ in the checkout
from make_fixtures import VGG, read_idx  # noqa: E402  (the fixtures' own model and reader)

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
BN_MODEL = ROOT / "models" / "vgg_badnets_bn.onnx"
LEGACY_MODEL = ROOT / "models" / "vgg_badnets_legacy.onnx"


# --------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------

def load_test_images(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n Fashion-MNIST test images [n,1,28,28] in [0,1] and labels.

    Pixels are scaled in float32 (u8 / 255, as ibau's IDX reader does) and then
    converted, so float64 runs see exactly the values ibau sees."""
    images_path = DATA_DIR / "t10k-images-idx3-ubyte.gz"
    labels_path = DATA_DIR / "t10k-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.exists():
            sys.exit(f"{p} is missing: run tools/setup.sh (Debian package dataset-fashion-mnist)")
    images = read_idx(images_path)[:n]
    labels = read_idx(labels_path)[:n]
    if len(images) < n:
        sys.exit(f"asked for {n} images, the test set has {len(images)}")
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return torch.from_numpy(x).to(dtype), torch.from_numpy(labels.astype(np.int64))


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def load_model(path: Path, dtype: torch.dtype) -> tuple[nn.Module, dict[str, str]]:
    """The fixtures' VGG in eval mode with the weights of the ONNX file `path`.

    Returns the model and the map PyTorch state-dict name -> ONNX initializer
    name. Conv, BatchNormalization and Gemm nodes are matched, in graph order,
    with the model's Conv2d, BatchNorm2d and Linear modules; a graph without
    BatchNormalization nodes (BN folded into the convolutions) gets a model
    whose BatchNorm modules are replaced by identities. Every shape is checked,
    every state-dict entry (but num_batches_tracked) must be loaded and every
    initializer used."""
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    by_op: dict[str, list[onnx.NodeProto]] = {"Conv": [], "BatchNormalization": [], "Gemm": []}
    for node in proto.graph.node:
        if node.op_type in by_op:
            by_op[node.op_type].append(node)
        elif any(i in inits for i in node.input):
            raise SystemExit(f"{path}: node {node.name} ({node.op_type}) reads an initializer "
                             "the reference cannot map")

    model = VGG()
    if not by_op["BatchNormalization"]:
        for i, m in enumerate(model.features):
            if isinstance(m, nn.BatchNorm2d):
                model.features[i] = nn.Identity()
    modules = {kind: [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
               for kind in (nn.Conv2d, nn.BatchNorm2d, nn.Linear)}
    pairs = [("Conv", nn.Conv2d), ("BatchNormalization", nn.BatchNorm2d), ("Gemm", nn.Linear)]
    for op, kind in pairs:
        if len(by_op[op]) != len(modules[kind]):
            raise SystemExit(f"{path}: {len(by_op[op])} {op} nodes, the VGG has "
                             f"{len(modules[kind])} {kind.__name__} modules")

    mapping: dict[str, str] = {}
    for node, (name, m) in zip(by_op["Conv"], modules[nn.Conv2d]):
        assert attr(node, "group", 1) == 1 and list(attr(node, "pads", [])) == [1, 1, 1, 1], node
        mapping[f"{name}.weight"] = node.input[1]
        mapping[f"{name}.bias"] = node.input[2]
    for node, (name, m) in zip(by_op["BatchNormalization"], modules[nn.BatchNorm2d]):
        m.eps = float(attr(node, "epsilon", 1e-5))  # the file's float32 epsilon, exactly
        for field, onnx_name in zip(["weight", "bias", "running_mean", "running_var"], node.input[1:5]):
            mapping[f"{name}.{field}"] = onnx_name
    for node, (name, m) in zip(by_op["Gemm"], modules[nn.Linear]):
        assert (attr(node, "transA", 0), attr(node, "transB", 0)) == (0, 1), node
        assert (attr(node, "alpha", 1.0), attr(node, "beta", 1.0)) == (1.0, 1.0), node
        mapping[f"{name}.weight"] = node.input[1]
        mapping[f"{name}.bias"] = node.input[2]

    state = model.state_dict()
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    if set(mapping) != expected:
        raise SystemExit(f"{path}: unmapped state-dict entries {sorted(expected - set(mapping))}, "
                         f"unknown {sorted(set(mapping) - expected)}")
    if set(mapping.values()) != set(inits):
        raise SystemExit(f"{path}: initializers not loaded: {sorted(set(inits) - set(mapping.values()))}")
    with torch.no_grad():
        for tname, oname in mapping.items():
            value = inits[oname]
            if tuple(value.shape) != tuple(state[tname].shape):
                raise SystemExit(f"{path}: {oname} has shape {value.shape}, "
                                 f"{tname} {tuple(state[tname].shape)}")
            state[tname].copy_(torch.from_numpy(value.copy()))
    loaded = {k: v for k, v in model.state_dict().items() if k in mapping}
    for tname, oname in mapping.items():
        assert np.array_equal(loaded[tname].numpy(), inits[oname]), tname
    return model.to(dtype).eval(), mapping


JITTER_NOTE = """
Why the gradient check also uses an ONNX-formula BatchNorm and jittered images:
at delta = 0 (the first perturbation step) the clean images' flat regions make
max-pooling windows whose candidates are equal up to rounding. Which candidate
wins, and so where the subgradient goes, then depends on the last bit of the
BatchNorm output: PyTorch's fused kernel (x * a + b, vectorised) and the ONNX
formula (x - mean) * (scale / sqrt(var + eps)) + B element by element (what
ibau's importer computes) round differently by ~1e-16, the forward passes agree
to 1e-16, yet the first step's gradient differs by ~1% in a few pixels. That is
a choice of subgradient, not of algorithm; so the strict checks either compute
BatchNorm the same way or add noise that removes the ties.
"""


class OnnxBatchNorm(nn.Module):
    """Inference BatchNormalization by the ONNX formula, element by element."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, shape = self.bn, (1, -1, 1, 1)
        gain = b.weight.view(shape) * torch.rsqrt(b.running_var.view(shape) + b.eps)
        return (x - b.running_mean.view(shape)) * gain + b.bias.view(shape)


def with_onnx_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of the VGG whose BatchNorm modules use the ONNX formula."""
    model = copy.deepcopy(model)
    for i, m in enumerate(model.features):
        if isinstance(m, nn.BatchNorm2d):
            model.features[i] = OnnxBatchNorm(m)
    return model


# --------------------------------------------------------------------------
# I-BAU
# --------------------------------------------------------------------------

def perturbation_search(model: nn.Module, batches, lr: float = 10.0, radius: float = 10.0,
                        reg: float = 1e-3, steps: int | None = None) -> torch.Tensor:
    """One SGD step per batch (or `steps` steps cycling over the batches) on
    -CE(f(x + delta), argmax f(x)) + reg ||delta||^2, then the L2 projection."""
    delta = torch.zeros_like(batches[0][0][:1], requires_grad=True)
    opt = torch.optim.SGD([delta], lr=lr)
    for s in range(len(batches) if steps is None else steps):
        x, _ = batches[s % len(batches)]
        with torch.no_grad():
            pseudo = torch.argmax(model(x), dim=1)
        loss = -F.cross_entropy(model(x + delta), pseudo, reduction="mean") \
            + reg * torch.pow(torch.norm(delta), 2)
        opt.zero_grad()
        delta.grad = torch.autograd.grad(loss, [delta])[0]
        opt.step()
    with torch.no_grad():
        norm = float(torch.norm(delta))
        return (delta * min(1.0, radius / norm if norm > 0 else 1.0)).detach()


def hypergradient(model: nn.Module, params: list[torch.Tensor], perturbation: torch.Tensor,
                  outer, poisoned_idx: list[int], inner, k: int = 5, inner_step: float = 0.1,
                  reg: float = 1e-3, tol: float = 1e-10) -> list[torch.Tensor]:
    """grad_theta L1 + J_theta(Phi)^T v_K for one outer batch."""
    delta = perturbation.detach().clone().requires_grad_(True)

    # Outer loss: the perturbation added to the chosen samples only.
    x_o, y_o = outer
    patching = torch.zeros_like(x_o)
    patching[poisoned_idx] = delta[0]
    outer_loss = F.cross_entropy(model(x_o + patching), y_o)
    grads = torch.autograd.grad(outer_loss, [delta] + params, allow_unused=True)
    grad_outer_delta = grads[0] if grads[0] is not None else torch.zeros_like(delta)
    grad_outer_theta = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], params)]

    # Fixed-point map: one differentiable gradient step on the inner loss.
    x_i, y_i = inner
    inner_loss = torch.mean(-F.cross_entropy(model(x_i + delta), y_i, reduction="none")) \
        + reg * torch.pow(torch.norm(delta), 2)
    inner_grad = torch.autograd.grad(inner_loss, [delta], create_graph=True)[0]
    phi = delta - inner_step * inner_grad

    v = torch.zeros_like(delta)
    for _ in range(k):
        previous = v
        v = torch.autograd.grad(phi, [delta], grad_outputs=v, retain_graph=True)[0] + grad_outer_delta
        if float(torch.norm(v - previous)) < tol:
            break
    indirect = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)
    return [g + i if i is not None else g for g, i in zip(grad_outer_theta, indirect)]


def unlearn(model: nn.Module, batches, rounds: int, k: int = 5, lr: float = 1e-3,
            share: float = 0.01, seed: int = 0, on_round=None) -> list[dict]:
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    rng = random.Random(seed)
    stats = []
    for r in range(1, rounds + 1):
        start = time.perf_counter()
        delta = perturbation_search(model, batches)
        for x, y in batches:
            idx = rng.sample(range(len(x)), int(len(x) * share))
            grads = hypergradient(model, params, delta, (x, y), idx, batches[0], k=k)
            opt.zero_grad()
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        s = {"round": r, "seconds": time.perf_counter() - start,
             "perturbation_norm": float(torch.norm(delta))}
        stats.append(s)
        if on_round:
            on_round(s)
    return stats


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------

def save(out: Path, rel: str, t: torch.Tensor) -> str:
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, t.detach().cpu().numpy())
    return rel


def gradcheck(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float64
    model, mapping = load_model(Path(args.model), dtype)
    onnx_bn_model = with_onnx_batchnorm(model)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    onnx_names = [mapping[n] for n in names]

    x, y = load_test_images(200, dtype)
    batches = [(x[:100], y[:100]), (x[100:200], y[100:200])]
    # The same images with seeded uniform noise in [0, 1e-3): no two pixels,
    # patches or pooling candidates are equal any more (see JITTER_NOTE).
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    xj = x + 1e-3 * noise
    jittered = [(xj[:100], y[:100]), (xj[100:200], y[100:200])]

    with torch.no_grad():
        logits = model(batches[0][0])
    # One pass over the two batches (the paper's schedule) with the stock
    # PyTorch model, and with BatchNorm computed by the ONNX formula.
    delta = perturbation_search(model, batches)
    delta_onnx_bn = perturbation_search(onnx_bn_model, batches)
    # On the jittered images: one pass, and four steps (two passes), whose
    # unprojected norm is ~40: this one exercises the projection onto the ball.
    delta_jittered = perturbation_search(model, jittered)
    delta_jittered_4 = perturbation_search(model, jittered, steps=4)

    mask_index = 7
    grads = hypergradient(model, params, delta, batches[1], [mask_index], batches[0], k=args.k)

    # Two Adam steps along the same hypergradient: the parameter change.
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(2):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    updates = [p.detach() - b for p, b in zip(params, before)]

    def perturbation_record(rel: str, d: torch.Tensor, **extra) -> dict:
        return {"file": save(out, rel, d), "norm": float(torch.norm(d)), **extra}

    manifest = {
        "model": str(Path(args.model).resolve()),
        "dtype": "float64",
        "threads": torch.get_num_threads(),
        "images": save(out, "images.npy", x),
        "images_jittered": save(out, "images_jittered.npy", xj),
        "labels": save(out, "labels.npy", y),
        "batches": [[0, 100], [100, 200]],
        "logits_batch1": save(out, "logits_batch1.npy", logits),
        "perturbation": {
            "stock": perturbation_record("perturbation.npy", delta, images="images", steps=None,
                                         batchnorm="torch"),
            "onnx_bn": perturbation_record("perturbation_onnx_bn.npy", delta_onnx_bn, images="images",
                                           steps=None, batchnorm="onnx"),
            "jittered": perturbation_record("perturbation_jittered.npy", delta_jittered,
                                            images="images_jittered", steps=None, batchnorm="torch"),
            "jittered_4_steps": perturbation_record("perturbation_jittered_4_steps.npy", delta_jittered_4,
                                                    images="images_jittered", steps=4, batchnorm="torch"),
        },
        "hypergradient_perturbation": "perturbation.npy",
        "outer_batch": 2,
        "inner_batch": 1,
        "mask_index": mask_index,
        "k": args.k,
        "inner_step": 0.1,
        "regularization": 1e-3,
        "adam": {"lr": 1e-3, "steps": 2},
        "parameters": onnx_names,
        "hypergradient": {o: save(out, f"hypergradient/{i:03d}.npy", g)
                          for i, (o, g) in enumerate(zip(onnx_names, grads))},
        "adam_update": {o: save(out, f"adam_update/{i:03d}.npy", u)
                        for i, (o, u) in enumerate(zip(onnx_names, updates))},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    norms = ", ".join(f"{k} {v['norm']:.6f}" for k, v in manifest["perturbation"].items())
    print(f"wrote {out}: perturbation norms {norms}; {len(grads)} parameter hypergradients")


def bench(args) -> None:
    torch.set_num_threads(args.threads)
    model, _ = load_model(Path(args.model), torch.float32)
    x, y = load_test_images(args.clean, torch.float32)
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size])
               for i in range(0, len(x), args.batch_size)]
    stats = unlearn(model, batches, args.rounds, k=args.k, seed=args.seed,
                    on_round=lambda s: print(json.dumps(s), flush=True))
    seconds = [s["seconds"] for s in stats]
    print(json.dumps({"summary": True, "threads": torch.get_num_threads(), "clean": args.clean,
                      "batches": len(batches), "rounds": args.rounds,
                      "seconds_per_round": sum(seconds) / len(seconds)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gradcheck", help="float64 perturbation and hypergradients as .npy")
    g.add_argument("--out", required=True)
    g.add_argument("--model", default=str(BN_MODEL))
    g.add_argument("--k", type=int, default=5)
    g.add_argument("--threads", type=int, default=1)
    g.set_defaults(run=gradcheck)
    b = sub.add_parser("bench", help="seconds per I-BAU round")
    b.add_argument("--clean", type=int, default=1000)
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--batch-size", type=int, default=100)
    b.add_argument("--k", type=int, default=5)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--model", default=str(LEGACY_MODEL))
    b.set_defaults(run=bench)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
