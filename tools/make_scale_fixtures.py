"""Make ImageNet-shape models for the scale benchmark (``tools/bench_scale.py``).

Not run by the test suite, and nothing it writes is checked in (the files are
100-350 MB). What it makes, under --out (default ``target/scale/``):

* ``resnet50.onnx``: a ResNet-50 written from nn modules (torchvision's
  architecture: 7x7 stride-2 stem, max pool, bottleneck blocks 3-4-6-3 with
  widths 64-128-256-512 and expansion 4, BatchNorm after every convolution,
  global average pooling, a 1000-class Linear head): 25.6 M parameters;
* ``vit_b16.onnx``: a ViT-B/16 (16x16 patch embedding by a stride-16 Conv2d,
  196 patches plus a class token, learned position embedding, 12 pre-LayerNorm
  blocks of width 768 with 12 heads and an MLP of 3072 with GELU, a final
  LayerNorm, a 1000-class Linear head on the class token): 86.6 M parameters;
* ``images.npz``: 16 RGB images 224x224 (``x`` uint8 [16,224,224,3], ``y``
  int64 [16], labels drawn at random in 0..999): Fashion-MNIST test images
  0..15 upsampled and repeated over the three channels, so the benchmark runs
  on real pictures without a download.

Weights are random (seeded) and the models are put in inference mode; both are
exported by ``torch.onnx.export(dynamo=False, opset_version=17)`` with a
dynamic batch axis, input ``input`` [batch,3,224,224] (ImageNet-normalised:
pass ``--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225``), output ``logits``
[batch,1000]. Each file is checked against PyTorch with onnxruntime on two
images.

Run from the repository root, after ``tools/setup.sh``::

    .venv/bin/python tools/make_scale_fixtures.py [--out DIR]

About two minutes on two cores (most of it the ViT export).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data as fd  # noqa: E402

CLASSES = 1000
SIZE = 224
IMAGES = 16


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViTB16(nn.Module):
    def __init__(self, classes: int = CLASSES, dim: int = 768, depth: int = 12,
                 heads: int = 12, mlp: int = 3072, patch: int = 16):
        super().__init__()
        tokens = (SIZE // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.ln(self.blocks(x))[:, 0])


def randomise_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Running statistics and affine terms a trained network could have, so
    BatchNorm is not an identity the importer might fold away unnoticed."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def export(model: nn.Module, path: Path) -> None:
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    err = float(np.abs(got - want).max())
    params = sum(p.numel() for p in model.parameters())
    print(f"{path}: {params / 1e6:.1f} M parameters, {path.stat().st_size / 1e6:.0f} MB, "
          f"onnxruntime vs PyTorch max |diff| {err:.2e}")
    if not err < 1e-3 * max(1.0, float(np.abs(want).max())):
        sys.exit(f"{path}: onnxruntime disagrees with PyTorch ({err})")


def images(out: Path) -> None:
    x, _ = fd.load_split("t10k", "hw")
    small = torch.from_numpy(x[:IMAGES].astype(np.float32)).unsqueeze(1)
    big = torch.nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear",
                                          align_corners=False)
    rgb = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = np.random.default_rng(0).integers(0, CLASSES, IMAGES).astype(np.int64)
    path = out / "images.npz"
    np.savez(path, x=rgb.permute(0, 2, 3, 1).numpy(), y=labels)
    print(f"{path}: {IMAGES} images {SIZE}x{SIZE} RGB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("target/scale"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    images(args.out)
    resnet = ResNet50()
    randomise_batchnorm(resnet, gen)
    export(resnet, args.out / "resnet50.onnx")
    export(ViTB16(), args.out / "vit_b16.onnx")


if __name__ == "__main__":
    main()
