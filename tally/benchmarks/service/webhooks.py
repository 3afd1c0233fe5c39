"""The webhook phase of ``tally bench service``: finish to a signed delivery, then a receiver that is down."""

from __future__ import annotations

import json
import statistics
import threading
import time


from tally.client import Client


class _Receiver:
    """A webhook receiver on loopback (its own thread): each delivery's id, status answered and arrival time."""

    def __init__(self):
        import http.server

        self.deliveries: list[tuple[str, int, float, dict]] = []
        self.up = True
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 200 if receiver.up else 503
                receiver.deliveries.append((self.headers["webhook-id"], status, time.time(), json.loads(body)))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def webhook_phase(url: str, secret: str, jobs: int = 8) -> dict:
    """p50 from the worker's finish to the receiver holding the signed ``completed`` delivery, one job at a
    time; then ``jobs`` jobs while the receiver answers 503 for 5 s: each event taken exactly once."""
    receiver = _Receiver()
    body = {"prompt": "a photo of red circles", "count": 2, "policy": "resample", "budget": {"max_candidates": 8},
            "webhook": receiver.url, "webhook_events": ["completed"]}
    try:
        with Client(url, secret, timeout=120) as client:
            latency = []
            for s in range(jobs + 1):  # the first warms up
                record = client.wait(client.submit(**body, seed=40_000 + s).id)
                deadline = time.monotonic() + 30
                while not any(d[3]["job"]["id"] == record.id for d in receiver.deliveries):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.002)
                arrived = [d[2] for d in receiver.deliveries if d[3]["job"]["id"] == record.id]
                if arrived and s:
                    latency.append(arrived[0] - record.timings["finished"])
            receiver.deliveries.clear()
            receiver.up = False
            down_since = time.monotonic()
            ids = [client.submit(**body, seed=50_000 + s).id for s in range(jobs)]
            for i in ids:
                client.wait(i)
            time.sleep(max(0.0, 5 - (time.monotonic() - down_since)))
            receiver.up = True
            deadline = time.monotonic() + 120
            while len({d[3]["job"]["id"] for d in receiver.deliveries if d[1] == 200}) < jobs:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        taken = [d[0] for d in receiver.deliveries if d[1] == 200]
        return {"jobs": jobs, "p50_ms": round(1000 * statistics.median(latency), 1) if latency else None,
                "delivered": len({d[3]["job"]["id"] for d in receiver.deliveries if d[1] == 200}),
                "duplicates": len(taken) - len(set(taken)),
                "attempts": len(receiver.deliveries)}
    finally:
        receiver.close()
