#!/usr/bin/env python3
"""Dev-only comparison server: the student's stack (FastAPI + PyTorch eager) serving the same
CIFAR ResNet-18, for infer/BENCHMARKS.md. Not part of the product or the tests.

    python scripts/fastapi_server.py --width 64 --port 8090 [--weights state_dict.pt]

Routes: POST /predict (multipart field `file`, or a raw image body), GET /healthz.
Without --weights the network is randomly initialised: the cost per request is the same.
"""

import argparse
import io
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, File, Request, UploadFile
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem, no max-pool, stages of width w, 2w, 4w, 8w."""

    def __init__(self, width=64, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, stride in enumerate([1, 2, 2, 2]):
            cout = width * 2**i
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build_app(model):
    app = FastAPI()

    def classify(data: bytes):
        start = time.perf_counter()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.BILINEAR)
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(32, 32, 3)
        x = (x.permute(2, 0, 1).float() / 255.0 - MEAN) / STD
        with torch.inference_mode():
            probs = torch.softmax(model(x.unsqueeze(0)), dim=1)[0]
        top = torch.topk(probs, 5)
        return {
            "predictions": [
                {"label": CLASSES[i], "class_id": int(i), "probability": float(p)}
                for p, i in zip(top.values.tolist(), top.indices.tolist())
            ],
            "timing_ms": (time.perf_counter() - start) * 1e3,
        }

    @app.post("/predict")
    async def predict(request: Request):
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload: UploadFile = form["file"]
            data = await upload.read()
        else:
            data = await request.body()
        return classify(data)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


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
    uvicorn.run(build_app(model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
