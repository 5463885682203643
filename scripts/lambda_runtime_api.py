"""Dev-only: a local AWS Lambda Runtime API for one execution environment, for
scripts/lambda_bench.py. `GET /2018-06-01/runtime/invocation/next` long-polls for the events that
`RuntimeApi.invoke` queues (with the Lambda-Runtime-* headers a runtime reads), `POST
.../invocation/{id}/response|error` and `POST .../init/error` are recorded, each with the time of
a monotonic clock: the first `/next` (the end of INIT), each hand-out and each answer.
"""

import json
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FUNCTION_TIMEOUT_S = 10  # infra/template.yaml's default Timeout
REGION = "eu-west-1"
FUNCTION_NAME = "infer-bench"

RUNTIME = "/2018-06-01/runtime"
NEXT_PATH = f"{RUNTIME}/invocation/next"
INVOCATION_RE = re.compile(rf"^{RUNTIME}/invocation/([^/]+)/(response|error)$")
INIT_ERROR_PATH = f"{RUNTIME}/init/error"


class BenchError(Exception):
    """A failure that stops the benchmark, with a message for the user."""


# ---------------------------------------------------------------------------------------------
# The Runtime API emulator


@dataclass
class Outcome:
    """What the function posted for one invocation; times are perf_counter_ns."""

    request_id: str
    kind: str  # "response" or "error"
    body: bytes
    handed_out_ns: int
    received_ns: int

    @property
    def ms(self):
        return (self.received_ns - self.handed_out_ns) / 1e6


class RuntimeApi:
    """A local Lambda Runtime API for one execution environment: `/next` long-polls for events
    queued by `invoke`, and the times of the first `/next`, of each hand-out and of each
    response are recorded with time.perf_counter_ns (a monotonic clock)."""

    def __init__(self):
        self._events = queue.Queue()
        self._outcomes = queue.Queue()
        self._handed_out = {}
        self._handed_out_changed = threading.Condition()
        self._stopping = threading.Event()
        self._first_next = threading.Event()
        self.first_next_ns = None
        self.init_error = None
        self._server = _Server(("127.0.0.1", 0), _RuntimeApiHandler)
        self._server.api = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="runtime-api", daemon=True)

    @property
    def address(self):
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def wait_for_init(self, proc, timeout_s, log_path):
        """The perf_counter_ns of the function's first `/next`; raises if it exits or posts an
        init error first, or takes longer than `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self._first_next.wait(0.005):
            if self.init_error is not None:
                raise BenchError(f"INIT failed: {self.init_error[:500]!r}\n{log_tail(log_path)}")
            if proc.poll() is not None:
                raise BenchError(f"the function exited ({proc.returncode}) during INIT\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"no /next within {timeout_s} s of the start\n{log_tail(log_path)}")
        return self.first_next_ns

    def invoke(self, event, timeout_s, proc, log_path):
        """Queues `event` (bytes) and waits for the function's response or error."""
        request_id = str(uuid.uuid4())
        self._events.put((request_id, event))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                outcome = self._outcomes.get(timeout=0.05)
                break
            except queue.Empty:
                if proc.poll() is not None:
                    raise BenchError(f"the function exited ({proc.returncode})\n{log_tail(log_path)}") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"no answer within {timeout_s} s\n{log_tail(log_path)}") from None
        if outcome.request_id != request_id:
            raise BenchError(f"answer for {outcome.request_id}, expected {request_id}")
        return outcome

    # Called from the server's threads.

    def _note_next(self):
        if not self._first_next.is_set():
            self.first_next_ns = time.perf_counter_ns()
            self._first_next.set()

    def _note_handed_out(self, request_id):
        with self._handed_out_changed:
            self._handed_out[request_id] = time.perf_counter_ns()
            self._handed_out_changed.notify_all()

    def _take_handed_out(self, request_id):
        """When `request_id` was handed out (waiting briefly: a quick function can post its
        answer before the thread that handed the event out has noted the time); None if never."""
        with self._handed_out_changed:
            self._handed_out_changed.wait_for(lambda: request_id in self._handed_out, timeout=1.0)
            return self._handed_out.pop(request_id, None)

    def _next_event(self):
        while not self._stopping.is_set():
            try:
                return self._events.get(timeout=0.05)
            except queue.Empty:
                continue
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A function killed at the end of a run drops its connections: expected, not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _RuntimeApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in one write (flushed below), and without Nagle's delay.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        api = self.server.api
        if self.path != NEXT_PATH:
            return self._send(404, b'{"errorMessage":"not found"}')
        api._note_next()
        item = api._next_event()
        if item is None:
            self.close_connection = True
            return
        request_id, event = item
        deadline_ms = int(time.time() * 1000) + FUNCTION_TIMEOUT_S * 1000
        self._send(
            200,
            event,
            {
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": f"arn:aws:lambda:{REGION}:123456789012:function:{FUNCTION_NAME}",
                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
            },
        )
        api._note_handed_out(request_id)

    def do_POST(self):
        api = self.server.api
        body = self._read_body()
        received = time.perf_counter_ns()
        if self.path == INIT_ERROR_PATH:
            api.init_error = body.decode(errors="replace") or "(empty)"
            return self._send(202, b'{"status":"OK"}')
        match = INVOCATION_RE.match(self.path)
        handed_out = api._take_handed_out(match.group(1)) if match else None
        if handed_out is None:
            return self._send(404, b'{"errorMessage":"unknown invocation"}')
        request_id, kind = match.groups()
        self._send(202, b'{"status":"OK"}')
        api._outcomes.put(Outcome(request_id, kind, body, handed_out, received))

    def handle_expect_100(self):
        # The base class buffers "100 Continue" like any header: a client waiting for it (curl,
        # in awslambdaric, for larger bodies) would stall until its own timeout.
        ok = super().handle_expect_100()
        self.wfile.flush()
        return ok

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status, body, headers=None):
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


def log_tail(path, lines=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
