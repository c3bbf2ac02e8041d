"""Check that a model with more than 2 GB of external data (past protobuf's
limit for one file) loads, sanitizes and writes (issue "Real-size models").

Not run by the test suite (it writes about 4.5 GB and needs about 10 GB of
memory). It builds, under --dir (default target/large):

* ``large.onnx`` + ``large.onnx.data``: a Fashion-MNIST-shaped classifier
  ``input [N,1,28,28] -> Flatten -> Gemm (784 x H) -> Relu -> Gemm (H x 10)``
  with H = 700,000 by default, so the first weight alone is 2.19 GB, stored
  in one external-data file (onnx.save_model with save_as_external_data);

then runs ``ibau inspect``, ``ibau sanitize`` (one round, a few search steps,
the big weight frozen so that training fits in memory, the rest trained) and
checks the written file with onnxruntime against the input's outputs where
nothing was trained, printing each step's seconds and peak RSS::

    .venv/bin/python tools/check_large_external.py [--hidden 700000]

``IBAU_BIN`` defaults to target/debug/ibau.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def build(path: Path, hidden: int) -> None:
    """The model, its tensors written straight into the external-data file
    (the onnx package cannot hold a tensor over 2 GB in a proto even on its
    way to external data)."""
    rng = np.random.default_rng(0)
    data = path.with_name(path.name + ".data")
    tensors = []
    with open(data, "wb") as f:
        for name, shape, scale in [("w1", (784, hidden), 1 / 28), ("b1", (hidden,), 0.0),
                                   ("w2", (hidden, 10), 1 / np.sqrt(hidden)), ("b2", (10,), 0.0)]:
            a = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))
            f.seek(-f.tell() % 4096, 1)  # 4 KiB alignment, as onnx's writer does
            offset = f.tell()
            a.tofile(f)
            t = TensorProto(name=name, dims=list(shape), data_type=TensorProto.FLOAT,
                            data_location=TensorProto.EXTERNAL)
            for k, v in [("location", data.name), ("offset", str(offset)),
                         ("length", str(a.nbytes))]:
                e = t.external_data.add()
                e.key, e.value = k, v
            tensors.append(t)
            del a
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"])],
        "large",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def timed(cmd: list[str]) -> tuple[int, float, float, str]:
    """Exit code, seconds and peak RSS (GB) of `cmd` in a child of its own."""
    probe = ("import json,resource,subprocess,sys,time;t=time.monotonic();"
             "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
             "print(json.dumps([p.returncode,time.monotonic()-t,"
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024,p.stderr[-2000:]]))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                         check=True).stdout
    rc, seconds, peak, err = json.loads(out)
    return rc, seconds, peak / 2**30, err


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("target/large"))
    p.add_argument("--hidden", type=int, default=700_000)
    args = p.parse_args()
    ibau = os.environ.get("IBAU_BIN", "target/debug/ibau")
    args.dir.mkdir(parents=True, exist_ok=True)
    model = args.dir / "large.onnx"
    if not model.exists():
        start = time.monotonic()
        build(model, args.hidden)
        print(f"built {model}: {model.stat().st_size} B, external data "
              f"{(args.dir / 'large.onnx.data').stat().st_size / 1e9:.2f} GB "
              f"in {time.monotonic() - start:.0f} s")
    data_gb = (args.dir / "large.onnx.data").stat().st_size / 1e9
    out = args.dir / "large_clean.onnx"
    steps = [
        ("inspect", [ibau, "inspect", str(model)]),
        ("sanitize", [ibau, "sanitize", str(model), "--clean", FASHION, "--clean-range", "0:64",
                      "--batch-size", "32", "--rounds", "1", "--perturbation-steps", "2",
                      "--no-scan", "--freeze", "^w1$", "-o", str(out)]),
    ]
    ok = True
    for name, cmd in steps:
        rc, seconds, peak, err = timed(cmd)
        print(f"| {name} | {data_gb:.2f} GB external | {seconds:.0f} s | peak RSS {peak:.2f} GB "
              f"| exit {rc} |", flush=True)
        if rc != 0:
            print(err)
            ok = False
            break
    if ok:
        import onnxruntime as ort
        x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
        before = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
        after = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
        written = onnx.load(str(out), load_external_data=False)
        ext = [t.name for t in written.graph.initializer if t.data_location == TensorProto.EXTERNAL]
        print(f"written: {out} with external {ext}, "
              f"{(args.dir / 'large_clean.onnx.data').stat().st_size / 1e9:.2f} GB; "
              f"onnxruntime loads both; max |logit change| {np.abs(after - before).max():.3e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
