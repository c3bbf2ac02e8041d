"""Make a backdoored fixture whose ONNX file fixes the batch size to 1.

``torch.onnx.export(model, (x,), path)`` with its defaults (the dynamo exporter
since torch 2.9, no ``dynamic_shapes``) writes a graph for exactly the example's
batch: the input is declared ``[1,1,28,28]`` and the batch is baked into the
Reshape targets (``[1, 1152]``). Many published models are exported that way.

What it makes (under --out, default ``models/``):

* ``vgg_badnets_batch1.onnx``: the VGG of ``tools/make_fixtures.py`` with the
  weights of ``vgg_badnets_traced.pt`` (so the same model and trigger as the
  other ``vgg_badnets_*`` files: 3x3 patch at 24,24 -> 0), exported with
  ``torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), path)`` and nothing
  else but the input/output names;
* ``fixtures_fixed.json``: its record (like ``fixtures_torch.json``).

ACC and ASR are measured with onnxruntime one image at a time (the only batch
the file takes), on test images 5000..9999.

Run from the repository root, after ``tools/setup.sh`` (seconds, no training)::

    .venv/bin/python tools/make_fixed_batch_fixture.py            # writes models/
    .venv/bin/python tools/make_fixed_batch_fixture.py --out DIR  # elsewhere
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch

sys.dont_write_bytecode = True  # no tools/__pycache__ from the imports below
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_data as fd  # noqa: E402
import make_fixtures as mf  # noqa: E402


def main() -> None:
    p = fd.fixture_arg_parser(__doc__)
    p.add_argument("--vgg", type=Path, default=Path("models/vgg_badnets_traced.pt"),
                   help="TorchScript VGG whose weights to use (default: models/vgg_badnets_traced.pt)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    model = mf.VGG()
    model.load_state_dict(torch.jit.load(str(args.vgg)).state_dict())
    model.eval()
    path = out / "vgg_badnets_batch1.onnx"
    program = torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), input_names=["input"],
                                output_names=["logits"])
    proto = program.model_proto
    mf.rename_io(proto, "input", "logits")
    onnx.save(proto, str(path), save_as_external_data=False)
    Path(str(path) + ".data").unlink(missing_ok=True)

    proto = onnx.load(str(path))
    shape = fd.shape_str(proto.graph.input[0])
    assert shape == "[1,1,28,28]", f"{path}: input {shape}, expected a fixed batch of 1"
    size = path.stat().st_size
    assert size < fd.SIZE_LIMIT, f"{path}: {size} bytes"

    data = fd.load_data("nchw")
    x_eval, y_eval = data["eval"]
    sess = fd.ort_session(path)
    with torch.no_grad():
        want = model(torch.from_numpy(x_eval[:64])).numpy()
    got = fd.predict_ort(sess, x_eval[:64], batch=1)
    diff = float(np.abs(want - got).max())
    assert diff < 1e-3, f"{path}: ORT and PyTorch disagree by {diff}"
    trigger = mf.badnets_trigger()
    acc, asr = fd.acc_asr(lambda x: fd.predict_ort(sess, x, batch=1), x_eval, y_eval, trigger)
    print(f"{path.name}: input {shape}, {size} B, opset {fd.onnx_opset(proto)}, "
          f"ACC {acc:.4f} ASR {asr:.4f} (onnxruntime), PyTorch diff {diff:.1e}")
    fd.write_records(out / "fixtures_fixed.json", [dict(
        file=fd.record_path(out, path), arch="vgg", exporter="torch.onnx dynamo defaults (batch fixed to 1)",
        opset=fd.onnx_opset(proto), trigger=trigger.cli, target=trigger.target, acc=round(acc, 4),
        asr=round(asr, 4), dtype="float32", io_dtype="float32", bytes=size)])


if __name__ == "__main__":
    main()
