"""``Client`` (blocking) and ``AsyncClient`` (asyncio): the same calls over httpx, answered with the API's
own pydantic models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from optimization.config import Policy
from service.schemas import JobAccepted, JobEvent, JobList, JobOut, LearningTask, Me, ModelOut, TokenOut

from .calls import (RESET, EventStream, Call, Follow, image_call, jobs_call, parse_as, retryable, submit_call,
                    tokens_call, to_image)
from .errors import ClientError, Unreachable, one_line, api_error

OnProgress = Callable[[JobEvent], Any]


# ------------------------------------------------------------------------------------------- clients
class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _unreachable(self, exc: httpx.HTTPError) -> Unreachable:
        return Unreachable(f"cannot reach the Tally API at {self.url}: {one_line(str(exc)) or type(exc).__name__}")

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

    def _run(self, call: Call):
        try:
            try:
                response = self._http.request(call.method, call.path, **call.kwargs)
            except RESET:
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
        return self._run(submit_call(prompt, count, object, num_images, seed, model, policy, budget,
                                      queue_if_offline, idempotency_key, webhook, webhook_events))

    def get(self, job_id: str) -> JobOut:
        return self._run(Call("GET", f"/v1/jobs/{job_id}", parse_as(JobOut)))

    def me(self) -> Me:
        """The calling key: owner, scope, name, whether keys are checked, its webhook secret."""
        return self._run(Call("GET", "/v1/me", parse_as(Me)))

    def jobs(self, status: str | None = None, cursor: str | None = None, limit: int = 20) -> JobList:
        """One page of this key's jobs, newest first; pass ``next_cursor`` back for the next."""
        return self._run(jobs_call(status, cursor, limit))

    def cancel(self, job_id: str) -> JobOut:
        return self._run(Call("DELETE", f"/v1/jobs/{job_id}", parse_as(JobOut)))

    def wait(self, job_id: str, on_progress: OnProgress | None = None, timeout: float | None = None,
             reconnects: int = 5, last_event_id: str | None = None) -> JobOut:
        """Follow the job's event stream until it ends and return its final record; each ``progress`` event
        goes to ``on_progress``. A dropped stream reconnects (up to ``reconnects`` times in a row, with
        backoff) from the last event id it saw, so no event is lost or repeated."""
        follow = Follow(job_id, timeout, reconnects, EventStream(last_event_id))
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
                if not retryable(exc):
                    raise
                time.sleep(follow.retry_in(exc))

    def image(self, job_id: str, index: int, boxes: bool = False, format: str = "png") -> bytes:
        """Image ``index`` of the job, encoded; ``boxes``: with the detections drawn."""
        return self._run(image_call(job_id, index, boxes, format))

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
        return self._run(Call("GET", "/v1/models", parse_as(list[ModelOut])))

    def tokens(self, model: str | None = None, object: str | None = None, count: int | None = None) -> list[TokenOut]:
        return self._run(tokens_call(model, object, count))

    def token(self, key: str) -> TokenOut:
        return self._run(Call("GET", f"/v1/tokens/{key}", parse_as(TokenOut)))

    def token_file(self, key: str) -> bytes:
        """The token as a textual-inversion safetensors file."""
        return self._run(Call("GET", f"/v1/tokens/{key}/file", lambda r: r.content))

    def import_token(self, data: bytes) -> TokenOut:
        """Admin keys only."""
        return self._run(Call("POST", "/v1/tokens", parse_as(TokenOut),
                               {"content": data, "headers": {"Content-Type": "application/octet-stream"}}))

    def delete_token(self, key: str) -> None:
        """Admin keys only."""
        self._run(Call("DELETE", f"/v1/tokens/{key}", lambda r: None))

    def learning(self) -> list[LearningTask]:
        """Background library-learning tasks and their progress."""
        return self._run(Call("GET", "/v1/tokens/learning", parse_as(list[LearningTask])))


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

    async def _run(self, call: Call):
        try:
            try:
                response = await self._http.request(call.method, call.path, **call.kwargs)
            except RESET:
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
        return await self._run(submit_call(prompt, count, object, num_images, seed, model, policy, budget,
                                            queue_if_offline, idempotency_key, webhook, webhook_events))

    async def get(self, job_id: str) -> JobOut:
        return await self._run(Call("GET", f"/v1/jobs/{job_id}", parse_as(JobOut)))

    async def jobs(self, status: str | None = None, cursor: str | None = None, limit: int = 20) -> JobList:
        return await self._run(jobs_call(status, cursor, limit))

    async def cancel(self, job_id: str) -> JobOut:
        return await self._run(Call("DELETE", f"/v1/jobs/{job_id}", parse_as(JobOut)))

    async def wait(self, job_id: str, on_progress: OnProgress | None = None, timeout: float | None = None,
                   reconnects: int = 5, last_event_id: str | None = None) -> JobOut:
        """As ``Client.wait``; ``on_progress`` may be a coroutine function."""
        follow = Follow(job_id, timeout, reconnects, EventStream(last_event_id))
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
                if not retryable(exc):
                    raise
                await asyncio.sleep(follow.retry_in(exc))

    async def image(self, job_id: str, index: int, boxes: bool = False, format: str = "png") -> bytes:
        return await self._run(image_call(job_id, index, boxes, format))

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
        return await self._run(Call("GET", "/v1/models", parse_as(list[ModelOut])))

    async def tokens(self, model: str | None = None, object: str | None = None,
                     count: int | None = None) -> list[TokenOut]:
        return await self._run(tokens_call(model, object, count))

    async def token(self, key: str) -> TokenOut:
        return await self._run(Call("GET", f"/v1/tokens/{key}", parse_as(TokenOut)))

    async def token_file(self, key: str) -> bytes:
        return await self._run(Call("GET", f"/v1/tokens/{key}/file", lambda r: r.content))

    async def import_token(self, data: bytes) -> TokenOut:
        return await self._run(Call("POST", "/v1/tokens", parse_as(TokenOut),
                                     {"content": data, "headers": {"Content-Type": "application/octet-stream"}}))

    async def delete_token(self, key: str) -> None:
        await self._run(Call("DELETE", f"/v1/tokens/{key}", lambda r: None))

    async def learning(self) -> list[LearningTask]:
        return await self._run(Call("GET", "/v1/tokens/learning", parse_as(list[LearningTask])))


def _require_success(job: JobOut) -> None:
    if job.status != "succeeded":
        if job.error is not None:
            raise ClientError(job.error.message, job.error.code)
        raise ClientError(f"job {job.id} ended {job.status}", f"job_{job.status}")
