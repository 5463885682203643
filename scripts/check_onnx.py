#!/usr/bin/env python3
"""Check an exported model with the `onnx` package, independently of the project's Rust code.

Python because the ONNX checker with full shape inference (`onnx.checker.check_model` with
`full_check=True`, the reference implementation of every operator's type and shape rules) exists
only in the `onnx` Python package; no Rust crate implements it. train/tests/export.rs runs this
on every variant the exporter writes, with the tools' venv that xtask installs (it pins `onnx`):

    .native/tools/bin/python scripts/check_onnx.py runs/x/model.onnx [more.onnx ...]

For each file: `onnx.checker.check_model(full_check=True)` (structure, operator schemas, and
strict shape inference against the shapes the exporter wrote in `value_info`), the graph's input
and output, the `metadata_props` contract, and the `model.onnx.sha256` sidecar when present.
Exits non-zero if any file fails.
"""

import hashlib
import json
import sys
from pathlib import Path

try:
    import onnx
except ImportError:
    sys.exit("the `onnx` package is missing: pip install onnx (see the docstring)")


def dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_param or d.dim_value for d in shape.dim]


def check(path: Path) -> bool:
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    print(f"{path}: valid (ir {model.ir_version}, opsets {opsets}, {len(graph.node)} nodes, "
          f"{len(graph.initializer)} initializers)")
    for v in graph.input:
        print(f"  input  {v.name}: {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)} {dims(v)}")
    for v in graph.output:
        print(f"  output {v.name}: {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)} {dims(v)}")
    props = {p.key: p.value for p in model.metadata_props}
    for key in ("class_names", "mean", "std"):
        if key in props:
            json.loads(props[key])
    for key, value in props.items():
        print(f"  {key} = {value}")
    ok = True
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        expected = sidecar.read_text().split()[0].lower()
        actual = hashlib.sha256(data).hexdigest()
        if actual == expected:
            print(f"  sha256 {actual} matches {sidecar.name}")
        else:
            print(f"  sha256 {actual} does NOT match {sidecar.name} ({expected})")
            ok = False
    return ok


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    failed = 0
    for arg in sys.argv[1:]:
        try:
            failed += not check(Path(arg))
        except (OSError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
            print(f"{arg}: INVALID: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
