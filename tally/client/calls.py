"""What each API call sends and how its answer is read: request builders, the event stream's parser, and how
a followed job reconnects."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import TypeAdapter

from optimization.config import Policy
from service.schemas import JobAccepted, JobEvent, JobList, JobOut, TokenOut

from .errors import ClientError, Unreachable, one_line

T = TypeVar("T")


# ----------------------------------------------------------------------------------------- requests
@dataclass
class Call:
    """One API request and how to read its answer; both clients send the same ones."""
    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    kwargs: dict = field(default_factory=dict)

    @property
    def retry_on_reset(self) -> bool:
        """Whether sending it twice is harmless: an idempotent method, or a submit with an idempotency key.
        A pooled connection the server closed meanwhile fails before any answer: such a call is sent once
        more, on a fresh connection."""
        return self.method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE") or "Idempotency-Key" in (
            self.kwargs.get("headers") or {})


# The connection failed under a request that may have been sent (reset, closed before the answer).
RESET = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def parse_as(kind: type[T] | Any) -> Callable[[httpx.Response], T]:
    adapter = TypeAdapter(kind)
    return lambda response: adapter.validate_json(response.content)


def submit_call(prompt: str, count: int, object: str | None, num_images: int, seed: int | None,
                 model: str | None, policy: Policy | str | None, budget: dict | None, queue_if_offline: bool,
                 idempotency_key: str | None, webhook: str | None, webhook_events: list[str] | None) -> Call:
    body = {"prompt": prompt, "count": count, "object": object, "num_images": num_images, "seed": seed,
            "model": model, "policy": policy, "budget": {k: v for k, v in (budget or {}).items() if v is not None},
            "queue_if_offline": queue_if_offline or None,  # sent only when asked: older servers forbid it
            "webhook": webhook, "webhook_events_filter": webhook_events}
    body = {k: v for k, v in body.items() if v is not None and v != {}}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call("POST", "/v1/jobs", parse_as(JobAccepted), {"json": body, "headers": headers})


def image_call(job_id: str, index: int, boxes: bool, format: str) -> Call:
    params = {"boxes": "true"} if boxes else {}
    if format != "png":
        params["format"] = format
    return Call("GET", f"/v1/jobs/{job_id}/images/{index}", lambda r: r.content, {"params": params})


def tokens_call(model: str | None, object: str | None, count: int | None) -> Call:
    params = {k: v for k, v in {"model": model, "object": object, "count": count}.items() if v is not None}
    return Call("GET", "/v1/tokens", parse_as(list[TokenOut]), {"params": params})


def jobs_call(status: str | None, cursor: str | None, limit: int) -> Call:
    params = {k: v for k, v in {"status": status, "cursor": cursor, "limit": limit}.items() if v is not None}
    return Call("GET", "/v1/jobs", parse_as(JobList), {"params": params})


def to_image(data: bytes):
    """Image bytes as a PIL image (loaded, so the bytes can go)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# ------------------------------------------------------------------------------------------- events
class EventStream:
    """Parses a text/event-stream line by line (the WHATWG rules Tally's stream uses: ``id``, ``event``,
    ``data``, comment lines) and remembers the last event id, so a reconnect resumes after it."""

    def __init__(self, last_event_id: str | None = None):
        self.last_event_id = last_event_id
        self._name, self._data, self._id = "message", [], None

    def feed(self, line: str) -> tuple[str, dict] | None:
        """One line (without its newline); an ``(event, data)`` pair when it ends an event."""
        if line:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self._name = value
            elif name == "data":
                self._data.append(value)
            elif name == "id":
                self._id = value
            return None
        name, data, event_id = self._name, self._data, self._id
        self._name, self._data, self._id = "message", [], None
        if not data:
            return None
        if event_id is not None:
            self.last_event_id = event_id
        return name, json.loads("\n".join(data))


def sse_events(response: httpx.Response):
    """(event name, data) pairs of a text/event-stream response, as they arrive."""
    stream = EventStream()
    for line in response.iter_lines():
        if (event := stream.feed(line)) is not None:
            yield event


@dataclass
class Follow:
    """The state of ``wait``: one per job, across reconnects."""
    job_id: str
    timeout: float | None
    reconnects: int
    stream: EventStream = field(default_factory=EventStream)
    failures: int = 0

    def __post_init__(self):
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def headers(self) -> dict:
        return {"Last-Event-ID": self.stream.last_event_id} if self.stream.last_event_id else {}

    def line(self, line: str) -> JobOut | JobEvent | None:
        """The final record, a progress event, or None."""
        event = self.stream.feed(line)
        if event is None:
            return None
        self.failures = 0  # a connection that delivers events is a working one
        name, data = event
        return JobOut.model_validate(data) if name == "final" else JobEvent.model_validate(data)

    def retry_in(self, exc: Exception) -> float:
        """Seconds to wait before reconnecting after ``exc``, or raise when out of tries or time."""
        self.failures += 1
        if self.failures > self.reconnects:
            if isinstance(exc, ClientError):
                raise exc
            raise Unreachable(f"the event stream of job {self.job_id} broke {self.failures} times in a row: "
                              f"{one_line(str(exc)) or type(exc).__name__}") from None
        self.check_deadline()
        return min(0.25 * 2 ** (self.failures - 1), 5.0)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} did not end within {self.timeout} s")


def retryable(exc: Exception) -> bool:
    """A dropped stream or a server restarting is retried; an answer such as 404 or 401 is not."""
    return isinstance(exc, (httpx.TransportError, Unreachable)) or (
        isinstance(exc, ClientError) and exc.status in (502, 503, 504))
