"""Webhooks: a job's ``start``, ``progress`` and ``completed`` events POSTed to the URL its request names.

As Replicate's API has them (``webhook``, ``webhook_events_filter``), signed as Standard Webhooks sign them:
headers ``webhook-id`` (the event's id: the same on every retry, so a receiver keeps each event once),
``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` under
the key's secret, ``GET /v1/me`` shows it as ``whsec_...``).

Delivered by the workers' side, never in an API request: ``push_event`` of a job with a webhook also adds
the event to one stream (``Keys.webhook_events``), which ``Dispatcher`` threads in the workers read as one
consumer group (each event goes to one of them; one that dies leaves its events to be claimed by another).
A failed delivery (no answer, a timeout, a status other than 2xx) is retried with exponential backoff from a
sorted set of due deliveries, up to ``webhook_max_attempts``. ``progress`` deliveries are throttled to one per
``PROGRESS_INTERVAL_S`` per job. URLs must be http(s); unless ``webhook_allow_private`` is set, their host must
resolve to public addresses only, checked on submit and again before each delivery (SSRF).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import redis

from optimization.errors import InvalidRequest

from . import stats
from .keys import Keys
from .settings import Settings
from .statuses import TERMINAL, JobStatus, WebhookEvent

log = logging.getLogger("tally.webhooks")

PROGRESS_INTERVAL_S = 0.5  # Replicate throttles its output webhooks the same way
GROUP = "dispatchers"
CLAIM_IDLE_MS = 60_000  # an event a dispatcher took this long ago without acknowledging it is taken over


# ------------------------------------------------------------------------------------------------ the URL
def _public_addresses(host: str) -> bool:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_global for info in infos)


def check_url(url: str, settings: Settings) -> str:
    """``url`` if a webhook may go there, else InvalidRequest saying why (http(s), a host, no credentials, and
    a public address unless the deployment allows private ones)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"webhook: must be an http:// or https:// URL with a host, got {url[:80]!r}")
    if parts.username or parts.password:
        raise InvalidRequest("webhook: must not hold credentials (the delivery is signed instead)")
    if not settings.webhook_allow_private:
        try:
            public = _public_addresses(parts.hostname)
        except (OSError, UnicodeError):
            raise InvalidRequest(f"webhook: the host {parts.hostname!r} does not resolve") from None
        if not public:
            raise InvalidRequest(f"webhook: {parts.hostname!r} is a loopback, private or reserved address; "
                                 "webhooks go to public addresses only")
    return url


# --------------------------------------------------------------------------------------------- signatures
def owner_secret(connection: redis.Redis, settings: Settings, owner: str) -> str:
    """The owner's signing secret, ``whsec_`` + base64: derived from one deployment secret kept in Redis (made
    on first use), so every host signs alike and nothing per key is stored."""
    k = Keys(settings.redis_prefix).webhook_master()
    connection.set(k, secrets.token_hex(32), nx=True)
    master = connection.get(k)
    key = hmac.new(master, owner.encode(), hashlib.sha256).digest()[:24]
    return "whsec_" + base64.b64encode(key).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of Standard Webhooks."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# ----------------------------------------------------------------------------------------------- events
def event_type(event: dict) -> WebhookEvent | None:
    """What a job event is to a webhook: ``completed`` (any end), ``progress``, ``start`` (running, before any
    progress); None for the rest (queued, a cancel asked)."""
    status = event.get("status")
    if status in TERMINAL:
        return "completed"
    if status == JobStatus.running and "progress" in event:
        return "progress"
    if status == JobStatus.running and "cancel_requested" not in event:
        return "start"
    return None


def add_event(pipe, settings: Settings, job_id: str, event: dict) -> None:
    """Hand a job event to the dispatchers (on the caller's pipeline)."""
    pipe.xadd(Keys(settings.redis_prefix).webhook_events(), {"job": job_id, "event": json.dumps(event)},
              maxlen=100_000, approximate=True)


class Dispatcher:
    """Delivers webhooks until ``stop`` is set; run one per worker process in a thread (``start``)."""

    def __init__(self, settings: Settings, name: str, client: httpx.Client | None = None):
        from .queue import connect

        self.settings, self.name = settings, name
        self.keys = Keys(settings.redis_prefix)
        self.connection = connect(settings)
        self.http = client or httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="webhooks", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        delay = 1.0
        while not stop.is_set():
            try:
                self._ensure_group()
                self._due_retries()
                self._claim_abandoned()
                found = self.connection.xreadgroup(GROUP, self.name, {self.keys.webhook_events(): ">"}, count=32,
                                                   block=500)
                for _, entries in found or []:
                    for entry_id, fields in entries:
                        self._handle(entry_id.decode(), fields)
                delay = 1.0
            except redis.RedisError as exc:
                from .queue import redis_trouble  # (queue imports this module's URL check)

                log.warning("webhooks: %s (%s); retrying in %.0f s", redis_trouble(exc), exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _ensure_group(self) -> None:
        try:
            self.connection.xgroup_create(self.keys.webhook_events(), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim_abandoned(self) -> None:
        _, entries, *_ = self.connection.xautoclaim(self.keys.webhook_events(), GROUP, self.name, CLAIM_IDLE_MS,
                                                     count=32)
        for entry_id, fields in entries:
            if fields:
                self._handle(entry_id.decode(), fields)

    def _handle(self, entry_id: str, fields: dict) -> None:
        job_id, event = fields[b"job"].decode(), json.loads(fields[b"event"])
        delivery = self._delivery(entry_id, job_id, event)
        if delivery is not None:
            self._attempt(delivery)
        self.connection.xack(self.keys.webhook_events(), GROUP, entry_id)

    def _delivery(self, entry_id: str, job_id: str, event: dict) -> dict | None:
        """The delivery of one event (URL, owner, body), or None when the job's filter leaves it out."""
        from .records import job_record, read_record

        kind = event_type(event)
        stored = read_record(self.connection, self.settings, job_id)
        if kind is None or stored is None:
            return None
        request = stored.request
        if not request.webhook or kind not in request.webhook_events_filter:
            return None
        if kind == "progress" and not self.connection.set(self.keys.webhook_throttle(job_id), 1, nx=True,
                                                          px=int(PROGRESS_INTERVAL_S * 1000)):
            return None
        job = job_record(self.connection, self.settings, job_id, stored.owner)
        body = {"type": f"job.{kind}", "timestamp": event.get("time", time.time()), "event": event, "job": job}
        return {"id": f"{job_id}-{entry_id}", "url": request.webhook, "owner": stored.owner, "attempt": 1,
                "body": json.dumps(body, default=str)}

    def _attempt(self, delivery: dict) -> None:
        try:
            check_url(delivery["url"], self.settings)  # again: the name may resolve elsewhere by now
        except InvalidRequest as exc:
            log.warning("webhook %s not delivered: %s", delivery["id"], exc)
            return
        body = delivery["body"].encode()
        timestamp = int(time.time())
        secret = owner_secret(self.connection, self.settings, delivery["owner"])
        headers = {"content-type": "application/json", "webhook-id": delivery["id"],
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature(secret, delivery["id"], timestamp, body)}
        try:
            response = self.http.post(delivery["url"], content=body, headers=headers)
            if response.is_success:
                stats.add(self.connection, self.settings, "webhooks_delivered")
                return
            why = f"status {response.status_code}"
        except httpx.HTTPError as exc:
            why = type(exc).__name__
        if delivery["attempt"] >= self.settings.webhook_max_attempts:
            log.warning("webhook %s to %s given up after %d attempts (%s)", delivery["id"], delivery["url"],
                        delivery["attempt"], why)
            stats.add(self.connection, self.settings, "webhooks_failed")
            return
        due = time.time() + min(2.0 ** (delivery["attempt"] - 1), 300.0)  # 1, 2, 4 ... s, at most 5 min
        retry = {**delivery, "attempt": delivery["attempt"] + 1}
        self.connection.zadd(self.keys.webhook_retries(), {json.dumps(retry): due})

    def _due_retries(self) -> None:
        for raw in self.connection.zrangebyscore(self.keys.webhook_retries(), 0, time.time(), start=0, num=32):
            if self.connection.zrem(self.keys.webhook_retries(), raw):  # one dispatcher claims each
                self._attempt(json.loads(raw))
