"""Dev-only: what the two Python Lambda handlers for scripts/lambda_bench.py share.

Python because the handlers it serves are Lambda's Python runtime peers of `infer`.

API Gateway HTTP API (v2) / function URL events in, `{statusCode, headers, body}` out, the
body shaped like `infer`'s `/v1/predict` answer (`predictions[0]` with `label`, `class_id`,
`probability` and the top-5 as `top_k`). Stdlib only, so that importing it costs nothing.
"""

import base64
import json
import sys
import time

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def event_body(event):
    """The request body's bytes (API Gateway base64-encodes binary bodies)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode()


def reply(status, doc):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "isBase64Encoded": False,
        "body": json.dumps(doc),
    }


def predictions_reply(probabilities, started):
    """A 200 reply for one image's class probabilities (a sequence of 10 floats)."""
    ranked = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:5]
    top = [{"label": CLASSES[i], "class_id": i, "probability": float(probabilities[i])} for i in ranked]
    prediction = dict(top[0], top_k=top)
    return reply(200, {"predictions": [prediction], "timing": {"total_ms": (time.perf_counter() - started) * 1e3}})


def handle(event, preprocess, probabilities):
    """One event: its image through `preprocess` (a 400 if it does not decode) and
    `probabilities`, answered with the top-5."""
    started = time.perf_counter()
    try:
        x = preprocess(event_body(event))
    except Exception as e:  # Pillow raises many types for bad input
        return reply(400, {"error": f"not a decodable image: {e}"})
    return predictions_reply(probabilities(x), started)


def log_init(**fields):
    """One JSON line on stderr that scripts/lambda_bench.py reads (INIT components)."""
    print("lambda-bench-init " + json.dumps(fields), file=sys.stderr, flush=True)
