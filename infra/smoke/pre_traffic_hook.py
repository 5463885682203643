"""CodeDeploy's PreTraffic hook: the smoke test against the NEW version, before `live` moves.

Python because it runs on Lambda's Python runtime, whose boto3 is all it needs (no package to
build). It ships with the images beside it (the template's `CodeUri: smoke/`), the same CIFAR-10
test images `smoke.sh` posts after the shift.

CodeDeploy's contract for a Lambda lifecycle hook: the event carries `DeploymentId` and
`LifecycleEventHookExecutionId`, and the hook must answer with
`codedeploy:PutLifecycleEventHookExecutionStatus` (`Succeeded` or `Failed`) for both ids; until
it does, the deployment waits (up to an hour). The version to test is not in the event: the
template passes it as `NEW_VERSION` (`!Ref <Function>.Version`, as SAM's docs do).

The hook invokes that version directly with function URL events (payload format 2.0) and fails
the deployment unless `GET /v1/model` reports the sha256 of the model's S3 sidecar (when the
model comes from S3 and has one) and at least MIN_CORRECT of the images are labelled right.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import boto3

IMAGES = Path(__file__).resolve().parent
MIN_CORRECT = int(os.environ.get("MIN_CORRECT", "14"))


class Failure(Exception):
    """The new version must not take traffic."""


def url_event(method: str, path: str, body: bytes = b"", content_type: str = "") -> dict:
    """A function URL request as Lambda hands it to the function (payload format 2.0)."""
    headers = {"host": "pre-traffic-hook.lambda-url.invalid", "user-agent": "pre-traffic-hook"}
    if content_type:
        headers["content-type"] = content_type
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "pre-traffic-hook",
            "domainName": headers["host"],
            "domainPrefix": "pre-traffic-hook",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "pre-traffic-hook"},
            "requestId": f"pre-traffic-{now:.6f}",
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


def call(lambda_client, version: str, method: str, path: str, body: bytes = b"", content_type: str = "") -> dict:
    reply = lambda_client.invoke(FunctionName=version, Payload=json.dumps(url_event(method, path, body, content_type)).encode())
    payload = reply["Payload"].read()
    if reply.get("FunctionError"):
        raise Failure(f"{method} {path}: the function failed ({reply['FunctionError']}): {payload[:500]!r}")
    answer = json.loads(payload)
    text = answer.get("body") or ""
    if answer.get("isBase64Encoded"):
        text = base64.b64decode(text).decode(errors="replace")
    if answer.get("statusCode") != 200:
        raise Failure(f"{method} {path} answered {answer.get('statusCode')}: {text[:500]}")
    try:
        return json.loads(text)
    except ValueError as e:
        raise Failure(f"{method} {path} answered no JSON: {text[:500]}") from e


def expected_sha256(s3, model_uri: str) -> str | None:
    """The sha256 in the S3 model's `.sha256` sidecar; None for a model in the package or one
    without a sidecar (smoke-stack.sh checks those after the shift)."""
    if not model_uri.startswith("s3://"):
        return None
    bucket, _, key = model_uri.removeprefix("s3://").partition("/")
    try:
        text = s3.get_object(Bucket=bucket, Key=f"{key}.sha256")["Body"].read().decode()
    except s3.exceptions.NoSuchKey:
        return None
    digest = text.split()[0] if text.split() else ""
    if len(digest) != 64:
        raise Failure(f"s3://{bucket}/{key}.sha256 holds no sha256: {text[:100]!r}")
    return digest


def check(lambda_client, s3, version: str, model_uri: str) -> str:
    """Raises Failure unless `version` serves the expected model and labels the images."""
    served = call(lambda_client, version, "GET", "/v1/model").get("sha256")
    want = expected_sha256(s3, model_uri)
    if want is not None and served != want:
        raise Failure(f"{version} serves the model with sha256 {served}, the sidecar of {model_uri} says {want}")
    total = correct = 0
    for image in sorted(IMAGES.glob("*.jpg")):
        want_label = image.stem.rsplit("-", 1)[0]
        answer = call(lambda_client, version, "POST", "/v1/predict", image.read_bytes(), "image/jpeg")
        got = (answer.get("predictions") or [{}])[0].get("label")
        total += 1
        correct += got == want_label
        print(f"pre-traffic: {image.name}: {got}")
    if total == 0 or correct < MIN_CORRECT:
        raise Failure(f"{version} labelled {correct} of {total} images right (need {MIN_CORRECT})")
    return f"{version} serves sha256 {served} and labelled {correct} of {total} right"


def handler(event, _context):
    status = "Failed"
    try:
        print(f"pre-traffic: {check(boto3.client('lambda'), boto3.client('s3'), os.environ['NEW_VERSION'], os.environ.get('MODEL_URI', ''))}")
        status = "Succeeded"
    # Whatever goes wrong must still be reported, or the deployment waits for an hour.
    except Exception as e:  # noqa: BLE001
        print(f"pre-traffic: the new version fails: {type(e).__name__}: {e}")
    boto3.client("codedeploy").put_lifecycle_event_hook_execution_status(
        deploymentId=event["DeploymentId"],
        lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
        status=status,
    )
    return {"status": status}
