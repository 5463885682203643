"""Dev-only: the CIFAR ResNet-18 in PyTorch eager as a Python Lambda handler, for
scripts/lambda_bench.py's comparison with `infer` (the student's stack without FastAPI).
Not part of the product.

    AWS_LAMBDA_RUNTIME_API=host:port MODEL_WIDTH=16 \
        python -m awslambdaric lambda_handler_torch.handler    # from scripts/

The network is scripts/fastapi_server.py's ResNet18 class, built (randomly initialised: the cost
per request is the same) and run once at import, which is Lambda's INIT; one thread
(`torch.set_num_threads(1)`), as Lambda gives one vCPU at 1769 MB. Preprocessing is
fastapi_server.py's. Takes API Gateway v2 / function URL events whose body is the image; answers
the top-5 as JSON.
"""

import time

_started = time.perf_counter()

import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lambda_handler_common import event_body, log_init, predictions_reply, reply  # noqa: E402

_imported = time.perf_counter()


def _import_network():
    """fastapi_server.py's ResNet18 and normalisation. That module imports FastAPI and uvicorn at
    the top for its server, which a Lambda handler would not ship: stand-ins keep their import
    time out of INIT (the network code does not touch them)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    stand_ins = {
        "fastapi": types.ModuleType("fastapi"),
        "uvicorn": types.ModuleType("uvicorn"),
    }
    for name in ("FastAPI", "File", "Request", "UploadFile"):
        setattr(stand_ins["fastapi"], name, None)
    for name, module in stand_ins.items():
        sys.modules.setdefault(name, module)
    import fastapi_server

    for name, module in stand_ins.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
    return fastapi_server


_server = _import_network()
MEAN, STD = _server.MEAN, _server.STD


def _model():
    torch.set_num_threads(1)
    model = _server.ResNet18(int(os.environ.get("MODEL_WIDTH", "16"))).eval()
    with torch.inference_mode():
        model(torch.zeros(1, 3, 32, 32))
    return model


MODEL = _model()
log_init(
    imports_ms=(_imported - _started) * 1e3,
    model_ms=(time.perf_counter() - _imported) * 1e3,
    torch=torch.__version__,
)


def preprocess(data):
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.BILINEAR)
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(32, 32, 3)
    return ((x.permute(2, 0, 1).float() / 255.0 - MEAN) / STD).unsqueeze(0)


def handler(event, context):
    started = time.perf_counter()
    try:
        x = preprocess(event_body(event))
    except Exception as e:  # Pillow raises many types for bad input
        return reply(400, {"error": f"not a decodable image: {e}"})
    with torch.inference_mode():
        probabilities = torch.softmax(MODEL(x), dim=1)[0]
    return predictions_reply(probabilities.tolist(), started)
