"""A typed client for the Tally API: ``Client`` (blocking) and ``AsyncClient`` (asyncio), both over httpx.

    with Client("http://127.0.0.1:8000", api_key) as tally:
        job, images = tally.generate("a photo of red circles", 3, on_progress=print)

Responses are the API's own pydantic models (``service.schemas``), so the client and the server cannot drift.
Every failure is a ``ClientError`` — the API's ``{code, message}`` with its HTTP status, as a subclass per
kind (``NotFound``, ``Invalid``, ``Unauthorized``, ``Forbidden``, ``RateLimited``, ``Conflict``,
``Unavailable``, ``ServerError``), or ``Unreachable`` when no answer came; the CLI shows it as one line
with its ``exit_status``. Importing this module loads neither Redis's client nor RQ (nor any of the server).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import TypeAdapter

from optimization.config import Policy
from service.schemas import JobAccepted, JobEvent, JobList, JobOut, LearningTask, Me, ModelOut, TokenOut

__all__ = ["AsyncClient", "Client", "ClientError", "Conflict", "Forbidden", "Invalid", "JobAccepted", "JobEvent",
           "JobOut", "NotFound", "RateLimited", "ServerError", "Unauthorized", "Unavailable", "Unreachable"]

T = TypeVar("T")
OnProgress = Callable[[JobEvent], Any]
TERMINAL = ("succeeded", "failed", "canceled")


# ------------------------------------------------------------------------------------------------- errors
class ClientError(Exception):
    """The API answered an error (``code``, ``message``, HTTP ``status``), or could not be reached (no code).
    ``exit_status`` is the CLI's exit status for it (sysexits.h where one fits)."""

    exit_status = 2  # the request was wrong

    def __init__(self, message: str, code: str | None = None, status: int | None = None,
                 retry_after: float | None = None):
        self.message, self.code, self.status, self.retry_after = message, code, status, retry_after
        super().__init__(f"{code}: {message}" if code else message)


class Unreachable(ClientError):
    """No answer: connection refused, a timeout, a dropped connection."""

    exit_status = 69  # EX_UNAVAILABLE


class Invalid(ClientError):
    """422: the request is wrong; ``message`` says what is allowed."""


class Unauthorized(ClientError):
    """401: no valid API key."""

    exit_status = 77  # EX_NOPERM


class Forbidden(ClientError):
    """403: the key's scope does not allow this (e.g. writing the token library needs an admin key)."""

    exit_status = 77


class NotFound(ClientError):
    """404: no such job, image or token for this key."""


class Conflict(ClientError):
    """409: an idempotency key reused with a different body."""


class RateLimited(ClientError):
    """429: the key's rate limit or quota; ``retry_after`` in seconds."""

    exit_status = 75  # EX_TEMPFAIL


class Unavailable(ClientError):
    """503: no worker serves the model, or the job store is away; ``retry_after`` in seconds."""

    exit_status = 69


class ServerError(ClientError):
    """Any other 5xx: a bug on the server (its logs have the traceback)."""

    exit_status = 70  # EX_SOFTWARE


_BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: Invalid, 422: Invalid,
              429: RateLimited, 503: Unavailable}


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def api_error(response: httpx.Response) -> ClientError:
    """The typed error of an error response (its body read)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    retry = response.headers.get("retry-after")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    kind = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else ClientError)
    if isinstance(body, dict) and "code" in body and "message" in body:
        return kind(_one_line(str(body["message"])), str(body["code"]), response.status_code, retry_after)
    reason = _one_line(response.text) or response.reason_phrase
    return kind(f"HTTP {response.status_code} from {response.request.url}: {reason}",
                f"http_{response.status_code}", response.status_code, retry_after)


# ----------------------------------------------------------------------------------------- requests
@dataclass
class _Call:
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
_RESET = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _model(kind: type[T] | Any) -> Callable[[httpx.Response], T]:
    adapter = TypeAdapter(kind)
    return lambda response: adapter.validate_json(response.content)


def _submit_call(prompt: str, count: int, object: str | None, num_images: int, seed: int | None,
                 model: str | None, policy: Policy | str | None, budget: dict | None, queue_if_offline: bool,
                 idempotency_key: str | None, webhook: str | None, webhook_events: list[str] | None) -> _Call:
    body = {"prompt": prompt, "count": count, "object": object, "num_images": num_images, "seed": seed,
            "model": model, "policy": policy, "budget": {k: v for k, v in (budget or {}).items() if v is not None},
            "queue_if_offline": queue_if_offline or None,  # sent only when asked: older servers forbid it
            "webhook": webhook, "webhook_events_filter": webhook_events}
    body = {k: v for k, v in body.items() if v is not None and v != {}}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return _Call("POST", "/v1/jobs", _model(JobAccepted), {"json": body, "headers": headers})


def _image_call(job_id: str, index: int, boxes: bool, format: str) -> _Call:
    params = {"boxes": "true"} if boxes else {}
    if format != "png":
        params["format"] = format
    return _Call("GET", f"/v1/jobs/{job_id}/images/{index}", lambda r: r.content, {"params": params})


def _tokens_call(model: str | None, object: str | None, count: int | None) -> _Call:
    params = {k: v for k, v in {"model": model, "object": object, "count": count}.items() if v is not None}
    return _Call("GET", "/v1/tokens", _model(list[TokenOut]), {"params": params})


def _jobs_call(status: str | None, cursor: str | None, limit: int) -> _Call:
    params = {k: v for k, v in {"status": status, "cursor": cursor, "limit": limit}.items() if v is not None}
    return _Call("GET", "/v1/jobs", _model(JobList), {"params": params})


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
class _Follow:
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
                              f"{_one_line(str(exc)) or type(exc).__name__}") from None
        self.check_deadline()
        return min(0.25 * 2 ** (self.failures - 1), 5.0)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} did not end within {self.timeout} s")


def _retryable(exc: Exception) -> bool:
    """A dropped stream or a server restarting is retried; an answer such as 404 or 401 is not."""
    return isinstance(exc, (httpx.TransportError, Unreachable)) or (
        isinstance(exc, ClientError) and exc.status in (502, 503, 504))


# ------------------------------------------------------------------------------------------- clients
class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _unreachable(self, exc: httpx.HTTPError) -> Unreachable:
        return Unreachable(f"cannot reach the Tally API at {self.url}: {_one_line(str(exc)) or type(exc).__name__}")

    def absolute(self, link: str) -> str:
        """A link from a response (``links``, an image's ``url``) as a full URL. The API returns paths unless
        its deployment sets ``public_url``; a path is resolved against this client's URL, whose own path
        (a proxy's prefix) is kept unless the link already starts with it."""
        if urlsplit(link).scheme:
            return link
        base = urlsplit(self.url)
        prefix = base.path.rstrip("/")
        path = link if prefix and (link == prefix or link.startswith(prefix + "/")) else prefix + "/" + link.lstrip("/")
        return urlunsplit((base.scheme, base.netloc, path, "", ""))


class Client(_Base):
    """The Tally API at ``url``, blocking; ``api_key`` is sent as ``Authorization: Bearer``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(url, api_key, timeout)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call):
        try:
            try:
                response = self._http.request(call.method, call.path, **call.kwargs)
            except _RESET:
                if not call.retry_on_reset:
                    raise
                response = self._http.request(call.method, call.path, **call.kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise api_error(response)
        return call.parse(response)

    # jobs
    def submit(self, prompt: str, count: int, *, object: str | None = None, num_images: int = 1,
               seed: int | None = None, model: str | None = None, policy: Policy | str | None = None,
               budget: dict | None = None, queue_if_offline: bool = False,
               idempotency_key: str | None = None, webhook: str | None = None,
               webhook_events: list[str] | None = None) -> JobAccepted:
        """Queue a job (``POST /v1/jobs``); ``budget``: ``max_seconds``, ``max_candidates``, ``max_iterations``;
        ``webhook``: a URL for the job's events (``webhook_events``: start, progress, completed)."""
        return self._run(_submit_call(prompt, count, object, num_images, seed, model, policy, budget,
                                      queue_if_offline, idempotency_key, webhook, webhook_events))

    def get(self, job_id: str) -> JobOut:
        return self._run(_Call("GET", f"/v1/jobs/{job_id}", _model(JobOut)))

    def me(self) -> Me:
        """The calling key: owner, scope, name, whether keys are checked, its webhook secret."""
        return self._run(_Call("GET", "/v1/me", _model(Me)))

    def jobs(self, status: str | None = None, cursor: str | None = None, limit: int = 20) -> JobList:
        """One page of this key's jobs, newest first; pass ``next_cursor`` back for the next."""
        return self._run(_jobs_call(status, cursor, limit))

    def cancel(self, job_id: str) -> JobOut:
        return self._run(_Call("DELETE", f"/v1/jobs/{job_id}", _model(JobOut)))

    def wait(self, job_id: str, on_progress: OnProgress | None = None, timeout: float | None = None,
             reconnects: int = 5, last_event_id: str | None = None) -> JobOut:
        """Follow the job's event stream until it ends and return its final record; each ``progress`` event
        goes to ``on_progress``. A dropped stream reconnects (up to ``reconnects`` times in a row, with
        backoff) from the last event id it saw, so no event is lost or repeated."""
        follow = _Follow(job_id, timeout, reconnects, EventStream(last_event_id))
        read_timeout = httpx.Timeout(self.timeout, read=None if timeout is None else timeout)
        while True:
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=follow.headers(),
                                       timeout=read_timeout) as response:
                    if response.is_error:
                        response.read()
                        raise api_error(response)
                    for line in response.iter_lines():
                        out = follow.line(line)
                        if isinstance(out, JobOut):
                            return out
                        if out is not None and on_progress is not None:
                            on_progress(out)
                        follow.check_deadline()
                raise Unreachable(f"the event stream of job {job_id} ended without a final event")
            except (httpx.HTTPError, ClientError) as exc:
                if not _retryable(exc):
                    raise
                time.sleep(follow.retry_in(exc))

    def image(self, job_id: str, index: int, boxes: bool = False, format: str = "png") -> bytes:
        """Image ``index`` of the job, encoded; ``boxes``: with the detections drawn."""
        return self._run(_image_call(job_id, index, boxes, format))

    def images(self, job: JobOut | str, boxes: bool = False) -> list:
        """The job's images as PIL images, in result order."""
        job = self.get(job) if isinstance(job, str) else job
        return [to_image(self.image(job.id, r.index, boxes)) for r in job.results]

    def generate(self, prompt: str, count: int, *, on_progress: OnProgress | None = None,
                 timeout: float | None = None, **options: Any) -> tuple[JobOut, list]:
        """Submit, wait, and fetch the images: ``(final record, PIL images)``. A job that does not succeed
        raises ``ClientError`` with its error (or its status)."""
        job = self.wait(self.submit(prompt, count, **options).id, on_progress, timeout)
        _require_success(job)
        return job, self.images(job)

    # models and tokens
    def models(self) -> list[ModelOut]:
        return self._run(_Call("GET", "/v1/models", _model(list[ModelOut])))

    def tokens(self, model: str | None = None, object: str | None = None, count: int | None = None) -> list[TokenOut]:
        return self._run(_tokens_call(model, object, count))

    def token(self, key: str) -> TokenOut:
        return self._run(_Call("GET", f"/v1/tokens/{key}", _model(TokenOut)))

    def token_file(self, key: str) -> bytes:
        """The token as a textual-inversion safetensors file."""
        return self._run(_Call("GET", f"/v1/tokens/{key}/file", lambda r: r.content))

    def import_token(self, data: bytes) -> TokenOut:
        """Admin keys only."""
        return self._run(_Call("POST", "/v1/tokens", _model(TokenOut),
                               {"content": data, "headers": {"Content-Type": "application/octet-stream"}}))

    def delete_token(self, key: str) -> None:
        """Admin keys only."""
        self._run(_Call("DELETE", f"/v1/tokens/{key}", lambda r: None))

    def learning(self) -> list[LearningTask]:
        """Background library-learning tasks and their progress."""
        return self._run(_Call("GET", "/v1/tokens/learning", _model(list[LearningTask])))


class AsyncClient(_Base):
    """``Client`` for asyncio: the same methods, awaited."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(url, api_key, timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call):
        try:
            try:
                response = await self._http.request(call.method, call.path, **call.kwargs)
            except _RESET:
                if not call.retry_on_reset:
                    raise
                response = await self._http.request(call.method, call.path, **call.kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise api_error(response)
        return call.parse(response)

    async def submit(self, prompt: str, count: int, *, object: str | None = None, num_images: int = 1,
                     seed: int | None = None, model: str | None = None, policy: Policy | str | None = None,
                     budget: dict | None = None, queue_if_offline: bool = False,
                     idempotency_key: str | None = None, webhook: str | None = None,
                     webhook_events: list[str] | None = None) -> JobAccepted:
        return await self._run(_submit_call(prompt, count, object, num_images, seed, model, policy, budget,
                                            queue_if_offline, idempotency_key, webhook, webhook_events))

    async def get(self, job_id: str) -> JobOut:
        return await self._run(_Call("GET", f"/v1/jobs/{job_id}", _model(JobOut)))

    async def jobs(self, status: str | None = None, cursor: str | None = None, limit: int = 20) -> JobList:
        return await self._run(_jobs_call(status, cursor, limit))

    async def cancel(self, job_id: str) -> JobOut:
        return await self._run(_Call("DELETE", f"/v1/jobs/{job_id}", _model(JobOut)))

    async def wait(self, job_id: str, on_progress: OnProgress | None = None, timeout: float | None = None,
                   reconnects: int = 5, last_event_id: str | None = None) -> JobOut:
        """As ``Client.wait``; ``on_progress`` may be a coroutine function."""
        follow = _Follow(job_id, timeout, reconnects, EventStream(last_event_id))
        read_timeout = httpx.Timeout(self.timeout, read=None if timeout is None else timeout)
        while True:
            try:
                async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=follow.headers(),
                                             timeout=read_timeout) as response:
                    if response.is_error:
                        await response.aread()
                        raise api_error(response)
                    async for line in response.aiter_lines():
                        out = follow.line(line)
                        if isinstance(out, JobOut):
                            return out
                        if out is not None and on_progress is not None and asyncio.iscoroutine(
                                called := on_progress(out)):
                            await called
                        follow.check_deadline()
                raise Unreachable(f"the event stream of job {job_id} ended without a final event")
            except (httpx.HTTPError, ClientError) as exc:
                if not _retryable(exc):
                    raise
                await asyncio.sleep(follow.retry_in(exc))

    async def image(self, job_id: str, index: int, boxes: bool = False, format: str = "png") -> bytes:
        return await self._run(_image_call(job_id, index, boxes, format))

    async def images(self, job: JobOut | str, boxes: bool = False) -> list:
        job = await self.get(job) if isinstance(job, str) else job
        return [to_image(data) for data in
                await asyncio.gather(*(self.image(job.id, r.index, boxes) for r in job.results))]

    async def generate(self, prompt: str, count: int, *, on_progress: OnProgress | None = None,
                       timeout: float | None = None, **options: Any) -> tuple[JobOut, list]:
        job = await self.wait((await self.submit(prompt, count, **options)).id, on_progress, timeout)
        _require_success(job)
        return job, await self.images(job)

    async def models(self) -> list[ModelOut]:
        return await self._run(_Call("GET", "/v1/models", _model(list[ModelOut])))

    async def tokens(self, model: str | None = None, object: str | None = None,
                     count: int | None = None) -> list[TokenOut]:
        return await self._run(_tokens_call(model, object, count))

    async def token(self, key: str) -> TokenOut:
        return await self._run(_Call("GET", f"/v1/tokens/{key}", _model(TokenOut)))

    async def token_file(self, key: str) -> bytes:
        return await self._run(_Call("GET", f"/v1/tokens/{key}/file", lambda r: r.content))

    async def import_token(self, data: bytes) -> TokenOut:
        return await self._run(_Call("POST", "/v1/tokens", _model(TokenOut),
                                     {"content": data, "headers": {"Content-Type": "application/octet-stream"}}))

    async def delete_token(self, key: str) -> None:
        await self._run(_Call("DELETE", f"/v1/tokens/{key}", lambda r: None))

    async def learning(self) -> list[LearningTask]:
        return await self._run(_Call("GET", "/v1/tokens/learning", _model(list[LearningTask])))


def _require_success(job: JobOut) -> None:
    if job.status != "succeeded":
        if job.error is not None:
            raise ClientError(job.error.message, job.error.code)
        raise ClientError(f"job {job.id} ended {job.status}", f"job_{job.status}")
