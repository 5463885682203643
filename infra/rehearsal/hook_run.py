"""The PreTraffic hook's own code, run as CodeDeploy runs it, against the real `infer` (a rehearsal
step; rehearse.py runs it).

Python because the hook is (infra/smoke/pre_traffic_hook.py, Lambda's Python runtime and its
boto3). The pieces:

- the new version: the x86-64 `infer` in Lambda mode behind `cargo lambda watch`'s runtime API,
  loading its model from S3 (moto on loopback), as the deployed function does;
- CodeDeploy: moto has no lifecycle hooks, so a loopback fake answers exactly the one call the
  hook makes, PutLifecycleEventHookExecutionStatus (AWS JSON 1.1,
  `CodeDeploy_20141006.PutLifecycleEventHookExecutionStatus`), and records it;
- Lambda's Invoke API: the same fake records the FunctionName of each call and hands the payload
  to `cargo lambda watch` (which serves one function, `_`, whatever the ARN).

The hook runs in its own process with the event CodeDeploy sends. It must report Succeeded for
the deployment's ids when the version serves the model of the sidecar, and Failed when the
sidecar names another model (the control: a hook that always succeeds fails this step).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from samtranslator.yaml_helper import yaml_parse

HOOK_TARGET = "CodeDeploy_20141006.PutLifecycleEventHookExecutionStatus"
VERSION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rehearsal-infer:7"


class Broken(Exception):
    """The hook would let a bad version take traffic, or would never answer CodeDeploy."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake(ThreadingHTTPServer):
    """CodeDeploy's hook status call and Lambda's Invoke, on loopback."""

    def __init__(self, runtime: str):
        self.runtime = runtime
        self.statuses: list[dict] = []
        self.invoked: list[str] = []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Fake

    def log_message(self, *_args) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("x-amz-target") == HOOK_TARGET:
            call = json.loads(body)
            self.server.statuses.append(call)
            answer = {"lifecycleEventHookExecutionId": call.get("lifecycleEventHookExecutionId")}
            self.reply(200, json.dumps(answer).encode(), {"content-type": "application/x-amz-json-1.1"})
            return
        prefix = "/2015-03-31/functions/"
        if self.path.startswith(prefix) and self.path.endswith("/invocations"):
            self.server.invoked.append(urllib.parse.unquote(self.path[len(prefix) : -len("/invocations")]))
            forward = urllib.request.Request(f"{self.server.runtime}{prefix}_/invocations", data=body, method="POST")
            with urllib.request.urlopen(forward, timeout=120) as answer:
                headers = {k: v for k, v in answer.headers.items() if k.lower().startswith("x-amz-function-error")}
                self.reply(answer.status, answer.read(), dict(headers, **{"content-type": "application/json"}))
            return
        self.reply(400, b'{"message":"not an API this fake answers"}', {"content-type": "application/json"})


def hook_source(template: dict, source: Path) -> tuple[Path, str]:
    """The directory and handler of the function that CodeDeploy runs before traffic moves."""
    hooks = {
        next(iter(r["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]["BeforeAllowTrafficHook"].values()))
        for r in template["Resources"].values()
        if "BeforeAllowTrafficHook" in r.get("UpdatePolicy", {}).get("CodeDeployLambdaAliasUpdate", {})
    }
    if len(hooks) != 1:
        raise Broken(f"expected one PreTraffic hook, found {sorted(hooks)}")
    props = yaml_parse(source.read_text())["Resources"][hooks.pop()]["Properties"]
    return (source.parent / props["CodeUri"]).resolve(), props["Handler"]


def wait_port(port: int, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Broken(f"{what} stopped (exit {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise Broken(f"{what} did not listen on {port} within {seconds}s")


def run_hook(directory: Path, handler: str, env: dict, event: dict) -> str:
    module, function = handler.rsplit(".", 1)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        f"import {module} as hook; print(json.dumps(hook.{function}(json.loads(sys.argv[2]), None)))"
    )
    out = subprocess.run([sys.executable, "-B", "-c", code, str(directory), json.dumps(event)], env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise Broken(f"the hook crashed (exit {out.returncode}), so CodeDeploy would wait an hour for it:\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def run(template: dict, source: Path, infer: Path, model: Path, moto_endpoint: str, root: Path) -> None:
    directory, handler = hook_source(template, source)
    key = "models/resnet18-cifar10.onnx"
    data = model.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="hook-models")
    s3.put_object(Bucket="hook-models", Key=key, Body=data)

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    watch = subprocess.Popen(
        ["cargo", "lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1", "--invoke-port", str(port)],
        cwd=root / "infer",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    function = None
    fake = None
    try:
        wait_port(port, watch, "cargo lambda watch")
        with tempfile.TemporaryDirectory() as tmp:
            function_env = dict(
                base,
                **creds,
                AWS_ENDPOINT_URL=moto_endpoint,
                AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt",
                AWS_LAMBDA_FUNCTION_NAME="_",
                AWS_LAMBDA_FUNCTION_VERSION="7",
                AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512",
                MODEL_URI=f"s3://hook-models/{key}",
                RUST_LOG="warn",
            )
            function = subprocess.Popen([str(infer)], cwd=tmp, env=function_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            fake = Fake(f"http://127.0.0.1:{port}")
            hook_env = dict(
                base,
                **creds,
                AWS_ENDPOINT_URL_LAMBDA=fake.url,
                AWS_ENDPOINT_URL_CODEDEPLOY=fake.url,
                AWS_ENDPOINT_URL_S3=moto_endpoint,
                NEW_VERSION=VERSION_ARN,
                MODEL_URI=f"s3://hook-models/{key}",
            )
            for sidecar, want in ((digest, "Succeeded"), ("0" * 64, "Failed")):
                s3.put_object(Bucket="hook-models", Key=f"{key}.sha256", Body=f"{sidecar}  resnet18-cifar10.onnx\n".encode())
                event = {"DeploymentId": f"d-REHEARSAL{want.upper()}", "LifecycleEventHookExecutionId": f"hook-{want.lower()}"}
                fake.statuses.clear()
                fake.invoked.clear()
                log = run_hook(directory, handler, hook_env, event)
                if function.poll() is not None:
                    raise Broken(f"infer in Lambda mode stopped (exit {function.returncode}):\n{function.stdout.read() if function.stdout else ''}")
                expected = {"deploymentId": event["DeploymentId"], "lifecycleEventHookExecutionId": event["LifecycleEventHookExecutionId"], "status": want}
                if fake.statuses != [expected]:
                    raise Broken(f"with a sidecar of {sidecar[:12]}..., the hook reported {fake.statuses}, expected [{expected}]:\n{log}")
                if not fake.invoked or set(fake.invoked) != {VERSION_ARN}:
                    raise Broken(f"the hook invoked {sorted(set(fake.invoked))}, not only NEW_VERSION {VERSION_ARN}")
                print(f"rehearsal: hook with a sidecar of {sidecar[:12]}...: {want} after {len(fake.invoked)} invocations of {VERSION_ARN}")
    finally:
        if fake is not None:
            fake.shutdown()
        if function is not None and function.poll() is None:
            function.terminate()
            function.wait(timeout=20)
        # `cargo lambda` is cargo with cargo-lambda below it: stop the group it leads.
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGTERM)
            try:
                watch.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(watch.pid, signal.SIGKILL)
                watch.wait()
