#!/usr/bin/env python3
"""Dev-only comparison server: the student's stack (FastAPI + PyTorch eager) serving the same
CIFAR ResNet-18, for infer/BENCHMARKS.md. Not part of the product or the tests.

Python because the peer it stands for is FastAPI with PyTorch.

    python scripts/fastapi_server.py --width 64 --port 8090 [--weights state_dict.pt]

Routes: POST /predict (multipart field `file`, or a raw image body), GET /healthz.
Without --weights the network is randomly initialised: the cost per request is the same.
"""

import argparse
import time

import torch
import uvicorn

from fastapi_app import build_app
from torch_resnet import CLASSES, ResNet18, preprocess

def make_app(model):
    """The app, answering with `model`."""

    def classify(data: bytes):
        start = time.perf_counter()
        x = preprocess(data)
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)[0]
        top = torch.topk(probs, 5)
        return {
            "predictions": [
                {"label": CLASSES[i], "class_id": int(i), "probability": float(p)}
                for p, i in zip(top.values.tolist(), top.indices.tolist())
            ],
            "timing_ms": (time.perf_counter() - start) * 1e3,
        }

    return build_app(classify)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--weights")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ResNet18(args.width).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    with torch.inference_mode():
        model(torch.zeros(1, 3, 32, 32))
    uvicorn.run(make_app(model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
