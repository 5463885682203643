"""The official Open Inference Protocol client, tritonclient[http], against a running `infer serve`.

Python because the official Open Inference Protocol client, tritonclient, is a Python package.

Run by infer/tests/oip_client.rs with the tools venv's python:
    client.py HOST:PORT MODEL_NAME DIR
DIR holds input.bin (the FP32 tensor, little-endian, shape in expected.json), expected.json
(ONNX Runtime's logits for it, computed in-process by the Rust test, and /v1/predict's label for
photo.jpg), photo.jpg and truncated.jpg. Every call of the client's HTTP API that a server
without model control can answer, JSON and binary tensors; exits non-zero on the first mismatch.
"""

import json
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def expect_error(call, needle, what):
    try:
        call()
    except InferenceServerException as e:
        # The client builds its message from the server's {"error": "<message>"}.
        text = str(e)
        print(f"the client reports: {text}")
        check(needle in text, f"{what}: the message names {needle!r}")
        return
    raise SystemExit(f"FAILED: {what}: no error")


def main():
    url, model, folder = sys.argv[1:4]
    with open(os.path.join(folder, "expected.json")) as f:
        expected = json.load(f)
    shape = expected["shape"]
    x = np.fromfile(os.path.join(folder, "input.bin"), dtype="<f4").reshape(shape)
    want = np.array(expected["logits"], dtype=np.float32).reshape(shape[0], -1)

    client = httpclient.InferenceServerClient(url=url)
    check(client.is_server_live(), "is_server_live")
    check(client.is_server_ready(), "is_server_ready")
    meta = client.get_server_metadata()
    check(meta["extensions"] == ["binary_tensor_data", "classification"], f"server extensions {meta['extensions']}")
    model_meta = client.get_model_metadata(model)
    version = model_meta["versions"][0]
    check(model_meta["name"] == model, "get_model_metadata")
    check(client.get_model_metadata(model, model_version=version)["versions"] == [version],
          "get_model_metadata of a version")
    check(client.is_model_ready(model), "is_model_ready")
    check(client.is_model_ready(model, model_version=version), "is_model_ready of a version")
    check(not client.is_model_ready(model, model_version="999"), "is_model_ready of a missing version is false")
    check(not client.is_model_ready("nope"), "is_model_ready of a missing model is false")

    def run(binary_in, binary_out, version_arg="", outputs=True):
        tensor = httpclient.InferInput(expected["input"], shape, "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary_in)
        requested = [httpclient.InferRequestedOutput(expected["output"], binary_data=binary_out)] if outputs else None
        return client.infer(model, [tensor], model_version=version_arg, outputs=requested, request_id="r1")

    for binary_in in (False, True):
        for binary_out in (False, True):
            result = run(binary_in, binary_out)
            got = result.as_numpy(expected["output"])
            check(got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-5),
                  f"infer, binary in {binary_in}, binary out {binary_out}: ONNX Runtime's logits {got.tolist()}")
            check(result.get_response()["id"] == "r1", "the request id comes back")
    # No outputs named: the client asks for every output in binary.
    got = run(True, True, outputs=False).as_numpy(expected["output"])
    check(np.allclose(got, want, rtol=1e-5, atol=1e-5), "infer with default outputs (binary_data_output)")
    got = run(True, True, version_arg=version).as_numpy(expected["output"])
    check(np.allclose(got, want, rtol=1e-5, atol=1e-5), "infer on the versioned route")

    tensor = httpclient.InferInput(expected["input"], shape, "FP32")
    tensor.set_data_from_numpy(x)
    pending = client.async_infer(model, [tensor])
    got = pending.get_result().as_numpy(expected["output"])
    check(np.allclose(got, want, rtol=1e-5, atol=1e-5), "async_infer")

    # An encoded JPEG as BYTES; the classification extension answers the classes.
    with open(os.path.join(folder, "photo.jpg"), "rb") as f:
        photo = f.read()
    image = httpclient.InferInput(expected["image_input"], [1], "BYTES")
    image.set_data_from_numpy(np.array([photo], dtype=np.object_))
    classes = httpclient.InferRequestedOutput(expected["output"], class_count=3)
    result = client.infer(model, [image], outputs=[classes])
    top = result.as_numpy(expected["output"])
    check(top.shape == (1, 3), f"classification shape {top.shape}")
    label = top[0][0].decode().split(":", 2)[2]
    check(label == expected["photo_label"], f"the JPEG's top class {label!r} is /v1/predict's")
    logits = client.infer(model, [image]).as_numpy(expected["output"])
    check(int(np.argmax(logits[0])) == expected["photo_class_id"], "the JPEG's logits")

    # Errors the client prints from the server's message.
    expect_error(lambda: client.infer("nope", [tensor]), 'no model "nope"', "an unknown model")
    with open(os.path.join(folder, "truncated.jpg"), "rb") as f:
        truncated = f.read()
    cut = httpclient.InferInput(expected["image_input"], [1], "BYTES")
    cut.set_data_from_numpy(np.array([truncated], dtype=np.object_))
    expect_error(lambda: client.infer(model, [cut]), "end-of-image marker", "a truncated JPEG")
    wrong = httpclient.InferInput(expected["input"], [1, 3, 8, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros([1, 3, 8, 8], dtype=np.float32))
    expect_error(lambda: client.infer(model, [wrong]), "does not match", "a wrong shape")
    client.close()
    print("all checks passed")


if __name__ == "__main__":
    main()
