#!/usr/bin/env python3
"""Dev-only comparison server: FastAPI + onnxruntime serving the same .onnx file that `infer serve`
runs, for infer/BENCHMARKS.md (scripts/bench_serving.py). Not part of the product or the tests.

Python because the peer it stands for is FastAPI with onnxruntime's Python API.

    python scripts/fastapi_ort_server.py --model models/resnet18-cifar10.onnx --port 8090

Routes: POST /predict (multipart field `file`, or a raw image body), GET /healthz.
Preprocessing as scripts/fastapi_server.py: RGB, bilinear resize to the model's input size, /255,
minus mean, divided by std, CHW float32; softmax and top-5 JSON. Input size, mean, std and class
names come from the model's metadata_props (the contract `train export` writes), else 32x32 and
the CIFAR-10 values. ONNX Runtime keeps its default session options, i.e. what a Python user gets:
intra-op threads = physical cores, threads spin between parallel sections, full graph
optimisation in memory at every start.
"""

import argparse
import io
import json
import time

import numpy as np
import onnxruntime as ort
import uvicorn
from PIL import Image

from fastapi_app import build_app

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]


def contract(session):
    """(height, width, mean, std, class names) from the model's metadata, with CIFAR defaults."""
    meta = session.get_modelmeta().custom_metadata_map
    order, layout = meta.get("channel_order", "RGB"), meta.get("layout", "NCHW")
    if (order, layout) != ("RGB", "NCHW"):
        raise SystemExit(f"this server feeds RGB NCHW; the model's metadata says {order} {layout}")
    height = int(meta.get("input_height", 32))
    width = int(meta.get("input_width", 32))
    mean = np.array(json.loads(meta.get("mean", json.dumps(MEAN))), np.float32).reshape(3, 1, 1)
    std = np.array(json.loads(meta.get("std", json.dumps(STD))), np.float32).reshape(3, 1, 1)
    classes = json.loads(meta.get("class_names", json.dumps(CLASSES)))
    return height, width, mean, std, classes


def make_app(session):
    """The app, answering with `session`."""
    height, width, mean, std, classes = contract(session)
    input_name = session.get_inputs()[0].name

    def classify(data: bytes):
        start = time.perf_counter()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.BILINEAR)
        x = np.asarray(image, np.float32).transpose(2, 0, 1)
        x = (x / 255.0 - mean) / std
        logits = session.run(None, {input_name: x[np.newaxis]})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(probs)[::-1][:5]
        return {
            "predictions": [
                {"label": classes[i], "class_id": int(i), "probability": float(probs[i])} for i in top
            ],
            "timing_ms": (time.perf_counter() - start) * 1e3,
        }

    return build_app(classify)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="the .onnx file")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    app = make_app(session)
    shape = [1, 3, *contract(session)[:2]]
    session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
