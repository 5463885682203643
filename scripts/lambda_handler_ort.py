"""Dev-only: the CIFAR ResNet-18 ONNX model as a Python Lambda handler (ONNX Runtime + Pillow),
for scripts/lambda_bench.py's comparison with `infer`. Not part of the product.

Python because it is the peer: Lambda's Python runtime with onnxruntime.

    AWS_LAMBDA_RUNTIME_API=host:port MODEL_PATH=models/resnet18-cifar10.onnx \
        python -m awslambdaric lambda_handler_ort.handler      # from scripts/

The model is loaded (and run once) at import, which is Lambda's INIT. One intra-op thread, as
Lambda gives one vCPU at 1769 MB. Preprocessing is scripts/fastapi_server.py's: RGB, bilinear
resize to 32x32, [0,1], CIFAR-10 mean/std. Takes API Gateway v2 / function URL events whose body
is the image; answers the top-5 as JSON.
"""

import time

_started = time.perf_counter()

import io  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

from lambda_handler_common import handle, log_init  # noqa: E402

_imported = time.perf_counter()

MODEL_PATH = os.environ.get(
    "MODEL_PATH", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "resnet18-cifar10.onnx")
)
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def _session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(MODEL_PATH, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: np.zeros((1, 3, 32, 32), np.float32)})
    return session, name


SESSION, INPUT = _session()
log_init(
    imports_ms=(_imported - _started) * 1e3,
    model_ms=(time.perf_counter() - _imported) * 1e3,
    onnxruntime=ort.__version__,
)


def preprocess(data):
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.BILINEAR)
    x = (np.asarray(image, np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def probabilities(x):
    logits = SESSION.run(None, {INPUT: x})[0][0]
    exp = np.exp(logits - logits.max())
    return (exp / exp.sum()).tolist()


def handler(event, context):
    return handle(event, preprocess, probabilities)
