"""A webhook receiver for the tests, run as its own process: ``python webhook_receiver.py PORT LOG [FAIL_FIRST]``.

Each POST (but to /probe) is appended to LOG as one JSON line (its headers, body and the status answered); the first
FAIL_FIRST requests are answered 503, the rest 200."""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, LOG, FAIL_FIRST = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0
seen = 0


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/probe":  # the test asking whether it is up
            self.send_response(204)
            self.end_headers()
            return
        seen += 1
        status = 503 if seen <= FAIL_FIRST else 200
        with open(LOG, "a") as log:
            entry = {"headers": dict(self.headers.items()), "body": body.decode(), "status": status}
            log.write(json.dumps(entry) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


HTTPServer(("127.0.0.1", PORT), Receiver).serve_forever()
