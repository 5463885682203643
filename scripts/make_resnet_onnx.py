#!/usr/bin/env python3
"""Dev-only: a CIFAR ResNet-18 ONNX file with random weights (BatchNorm folded into the convs) and
the project's metadata contract, for serving benchmarks before/without a trained model.

    python scripts/make_resnet_onnx.py --width 64 --out /tmp/w64.onnx   # needs `onnx` and `numpy`

Writes OUT and OUT.sha256. Same graph shape as `train export`: input float32 [N,3,32,32],
output logits [N,10].
"""

import argparse
import hashlib
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    nodes, inits = [], []
    counter = [0]

    def conv(x, cin, cout, k, stride, relu):
        counter[0] += 1
        name = f"conv{counter[0]}"
        w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits.extend([numpy_helper.from_array(w, name + ".w"), numpy_helper.from_array(b, name + ".b")])
        nodes.append(helper.make_node("Conv", [x, name + ".w", name + ".b"], [name], pads=[k // 2] * 4,
                                      strides=[stride, stride], kernel_shape=[k, k]))
        if relu:
            nodes.append(helper.make_node("Relu", [name], [name + ".r"]))
            return name + ".r"
        return name

    def block(x, cin, cout, stride):
        h = conv(x, cin, cout, 3, stride, True)
        h = conv(h, cout, cout, 3, 1, False)
        short = conv(x, cin, cout, 1, stride, False) if stride != 1 or cin != cout else x
        out = f"add{counter[0]}"
        nodes.append(helper.make_node("Add", [h, short], [out]))
        nodes.append(helper.make_node("Relu", [out], [out + ".r"]))
        return out + ".r"

    w = args.width
    x = conv("input", 3, w, 3, 1, True)
    cin = w
    for i, stride in enumerate([1, 2, 2, 2]):
        cout = w * 2**i
        x = block(x, cin, cout, stride)
        x = block(x, cout, cout, 1)
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1))
    fc = rng.normal(0, 0.01, (10, cin)).astype(np.float32)
    inits.extend([numpy_helper.from_array(fc, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, f"resnet18_w{w}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_resnet_onnx")
    model.ir_version = 9
    meta = {
        "contract_version": "1",
        "class_names": json.dumps(CLASSES),
        "input_height": "32", "input_width": "32", "channel_order": "RGB", "layout": "NCHW",
        "mean": json.dumps([0.4914, 0.4822, 0.4465]), "std": json.dumps([0.247, 0.2435, 0.2616]),
        "architecture": "resnet18-cifar", "width": str(w), "dataset": "CIFAR-10 (random weights)",
        "project_version": "0.1.0",
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    with open(args.out, "wb") as f:
        f.write(data)
    name = args.out.rsplit("/", 1)[-1]
    with open(args.out + ".sha256", "w") as f:
        f.write(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    print(f"{args.out}: {len(data)} bytes")


if __name__ == "__main__":
    main()
