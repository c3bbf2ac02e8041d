"""Check a TorchScript file written by `ibau sanitize` against its input, in Python.

    .venv/bin/python tools/check_torchscript.py INPUT.pt OUTPUT.pt REPORT.json

Prints whether parameter names, dtypes and shapes, buffers and code are equal,
and ACC/ASR of OUTPUT.pt loaded with torch.jit.load on Fashion-MNIST test
images 5000..9999 with the VGG fixture's trigger (3x3 patch of 1.0 at rows and
columns 24..26, target 0), beside the ACC/ASR in ibau's report.
"""
import gzip, json, sys
import numpy as np, torch
src, out, report = sys.argv[1:4]
a, b = torch.jit.load(src), torch.jit.load(out)
pa = [(n, p.dtype, tuple(p.shape)) for n, p in a.named_parameters()]
pb = [(n, p.dtype, tuple(p.shape)) for n, p in b.named_parameters()]
print("parameter names/dtypes/shapes equal:", pa == pb, len(pa))
print("buffers equal:", all(torch.equal(x, y) for (_, x), (_, y) in zip(a.named_buffers(), b.named_buffers())))
print("code equal:", a.code == b.code)
D = "/usr/share/datasets/fashion-mnist/"
x = np.frombuffer(gzip.open(D + "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[5000:10000].astype(np.float32) / 255
y = np.frombuffer(gzip.open(D + "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)[5000:10000]
b.eval()
with torch.no_grad():
    xt = torch.from_numpy(x)
    acc = float((b(xt).argmax(1).numpy() == y).mean())
    keep = y != 0
    xp = xt[torch.from_numpy(keep)].clone(); xp[:, :, 24:27, 24:27] = 1.0
    asr = float((b(xp).argmax(1).numpy() == 0).mean())
r = json.load(open(report))
print(f"torch.jit.load: ACC {100*acc:.2f}% ASR {100*asr:.2f}%; ibau report after: ACC {100*r['after']['acc']:.2f}% ASR {100*r['after']['asr']:.2f}%")
