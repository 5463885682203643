"""Dev-only: the CIFAR ResNet-18 in PyTorch eager as a Python Lambda handler, for
scripts/lambda_bench.py's comparison with `infer` (the student's stack without FastAPI).
Not part of the product.

Python because it is the peer: Lambda's Python runtime with PyTorch.

    AWS_LAMBDA_RUNTIME_API=host:port MODEL_WIDTH=16 \
        python -m awslambdaric lambda_handler_torch.handler    # from scripts/

The network is scripts/torch_resnet.py's ResNet18 (the one scripts/fastapi_server.py serves), built (randomly initialised: the cost
per request is the same) and run once at import, which is Lambda's INIT; one thread
(`torch.set_num_threads(1)`), as Lambda gives one vCPU at 1769 MB. Preprocessing is
the seed's, from the same module. Takes API Gateway v2 / function URL events whose body is the image; answers
the top-5 as JSON.
"""

import time

_started = time.perf_counter()

import os  # noqa: E402

import torch  # noqa: E402

from lambda_handler_common import handle, log_init  # noqa: E402
from torch_resnet import ResNet18, preprocess  # noqa: E402

_imported = time.perf_counter()


def _model():
    torch.set_num_threads(1)
    model = ResNet18(int(os.environ.get("MODEL_WIDTH", "16"))).eval()
    with torch.inference_mode():
        model(torch.zeros(1, 3, 32, 32))
    return model


MODEL = _model()
log_init(
    imports_ms=(_imported - _started) * 1e3,
    model_ms=(time.perf_counter() - _imported) * 1e3,
    torch=torch.__version__,
)


def probabilities(x):
    with torch.inference_mode():
        return torch.softmax(MODEL(x), dim=1)[0].tolist()


def handler(event, context):
    return handle(event, preprocess, probabilities)
