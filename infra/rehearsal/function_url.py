"""A Lambda function URL with AuthType AWS_IAM, on loopback, in front of a real `infer serve`:
what the smoke script's signed path talks to in the rehearsal. Python: botocore's own SigV4
signer recomputes each request's signature, as the service would.

A request goes through only when
- it carries a SigV4 `Authorization` header for service `lambda` in the URL's region, dated
  within 15 minutes, with `host` and `x-amz-date` among its signed headers, for a known key
  (and that key's session token when it has one), and its body's hash matches a sent
  `x-amz-content-sha256`;
- its signature equals the one computed from the key's secret;
- the key's identity policies allow both `lambda:InvokeFunctionUrl` and `lambda:InvokeFunction`
  on the alias the URL points at (Lambda's rule for AWS_IAM URLs since October 2025), as IAM
  decides (`iam_policy.py`).
Otherwise it answers 403 `{"Message":"Forbidden"}`, as a function URL does, and records why.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import iam_policy
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


class FunctionUrl:
    def __init__(self, upstream: str, region: str, alias_arn: str, keys: dict[str, tuple[str, str | None, list]]):
        """`keys`: access key id -> (secret, session token or None, identity policies)."""
        self.upstream = upstream.rstrip("/")
        self.region = region
        self.alias_arn = alias_arn
        self.keys = keys
        self.refusals: list[str] = []
        self.forwarded = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                why = outer.refusal(self.command, self.path, self.headers, body)
                if why:
                    outer.refusals.append(why)
                    reply = b'{"Message":"Forbidden"}'
                    self.send_response(403)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                outer.forwarded += 1
                req = urllib.request.Request(outer.upstream + self.path, data=body or None, method=self.command)
                if self.headers.get("content-type"):
                    req.add_header("content-type", self.headers["content-type"])
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        status, ctype, data = r.status, r.headers.get("content-type", ""), r.read()
                except urllib.error.HTTPError as e:
                    status, ctype, data = e.code, e.headers.get("content-type", ""), e.read()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def refusal(self, method: str, path: str, headers, body: bytes) -> str | None:
        """Why this request is refused, or None when it may invoke the function."""
        m = _AUTH.match(headers.get("authorization", ""))
        if not m:
            return "no SigV4 Authorization header"
        if (m["service"], m["region"]) != ("lambda", self.region):
            return f"signed for {m['service']} in {m['region']}, not lambda in {self.region}"
        if m["key"] not in self.keys:
            return f"unknown access key {m['key']}"
        secret, token, policies = self.keys[m["key"]]
        amz_date = headers.get("x-amz-date", "")
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            return f"bad x-amz-date {amz_date!r}"
        if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 900 or m["date"] != amz_date[:8]:
            return "request time outside 15 minutes or not the credential's date"
        signed = m["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return f"host and x-amz-date must be signed, signed: {signed}"
        if token is not None and headers.get("x-amz-security-token") != token:
            return "missing or wrong session token"
        sent_hash = headers.get("x-amz-content-sha256")
        if sent_hash not in (None, "UNSIGNED-PAYLOAD") and sent_hash != hashlib.sha256(body).hexdigest():
            return "x-amz-content-sha256 is not the body's hash"
        missing = [h for h in signed if headers.get(h) is None]
        if missing:
            return f"signed headers {missing} are not in the request"
        request = AWSRequest(
            method=method,
            url=f"http://{headers['host']}{path}",
            data=body,
            headers={h: headers[h] for h in signed},
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(m["key"], secret, token), "lambda", self.region)
        canonical = signer.canonical_request(request)
        if signer.signed_headers(signer.headers_to_sign(request)) != m["signed"]:
            return f"signed headers {m['signed']!r} are not in canonical form"
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, m["signature"]):
            return "signature does not match"
        for action, context in (
            ("lambda:InvokeFunctionUrl", {"lambda:FunctionUrlAuthType": "AWS_IAM"}),
            ("lambda:InvokeFunction", {}),
        ):
            decision = iam_policy.decide(policies, action, self.alias_arn, context)
            if decision != iam_policy.ALLOW:
                return f"{action} on {self.alias_arn}: {decision}"
        return None


def describe(refusals: list[str]) -> str:
    return json.dumps(sorted(set(refusals)))
