#!/usr/bin/env python3
"""Dev-only: floating-point operations per image of an ONNX classifier (a multiply-add counts as
two), from its Conv and Gemm/MatMul nodes with shapes inferred at batch 1. With the machine's
FMA peak (`cargo run --release -p scratch --example fma_peak`) it gives the most images/s any
direct-convolution runtime can reach.

    python scripts/onnx_flops.py MODEL.onnx [MODEL.onnx ...]   # needs `onnx`
"""

import sys

import onnx
from onnx import shape_inference


def flops(path):
    model = onnx.load(path)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    graph = model.graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(graph.value_info) + list(graph.output) + list(graph.input)
    }
    weights = {i.name: list(i.dims) for i in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            out_c, in_c_per_group, kh, kw = weights[node.input[1]]
            _, _, oh, ow = shapes[node.output[0]]
            total += 2 * out_c * in_c_per_group * kh * kw * oh * ow
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            rows, cols = weights[node.input[1]][:2]
            total += 2 * rows * cols
    return total


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        print(f"{path}: {flops(path) / 1e9:.4f} GFLOP per image")


if __name__ == "__main__":
    main()
