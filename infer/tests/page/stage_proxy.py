"""What an API Gateway stage does to paths: serves UPSTREAM under /STAGE, stripping the prefix.

    stage_proxy.py UPSTREAM_HOST:PORT STAGE

Prints "listening on http://127.0.0.1:PORT" and forwards every request under /STAGE to UPSTREAM
with the prefix taken off; anything else is a 404, as API Gateway answers it. Used by
infer/tests/page.rs to load the page from http://127.0.0.1:PORT/STAGE, without a trailing slash.
"""

import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    upstream, stage = sys.argv[1], "/" + sys.argv[2].strip("/")

    class Handler(BaseHTTPRequestHandler):
        def forward(self):
            path = self.path
            if path != stage and not path.startswith(stage + "/") and not path.startswith(stage + "?"):
                self.send_error(404, f"not under the stage {stage}")
                return
            rest = path[len(stage):]
            if not rest.startswith("/"):
                rest = "/" + rest
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection = http.client.HTTPConnection(upstream, timeout=30)
            connection.request(self.command, rest, body=body, headers=headers)
            reply = connection.getresponse()
            data = reply.read()
            self.send_response(reply.status)
            for key, value in reply.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            connection.close()

        do_GET = forward
        do_POST = forward

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
