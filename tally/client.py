"""A small client for the Tally API: submit a job, follow its Server-Sent Events to the end, fetch images.

Every failure is a ``ClientError`` (an ``InvalidRequest``, so the CLI shows it as one line and exit status 2):
the API's own ``{code, message}`` errors, and a server that cannot be reached at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from optimization.errors import InvalidRequest


class ClientError(InvalidRequest):
    """The API answered an error (``code``, ``message``, HTTP ``status``), or could not be reached (no code)."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        self.message, self.code, self.status = message, code, status
        super().__init__(f"{code}: {message}" if code else message)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event name, data) pairs of a text/event-stream response."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _api_error(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body and "message" in body:
        return ClientError(_one_line(str(body["message"])), str(body["code"]), response.status_code)
    reason = _one_line(response.text) or response.reason_phrase
    return ClientError(f"HTTP {response.status_code} from {response.request.url}: {reason}",
                       f"http_{response.status_code}", response.status_code)


class Client:
    """The Tally API at ``url``; ``api_key`` is sent as ``Authorization: Bearer`` and ``X-API-Key``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}", "X-API-Key": api_key} if api_key else {}
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _unreachable(self, exc: httpx.HTTPError) -> ClientError:
        return ClientError(f"cannot reach the Tally API at {self.url}: {_one_line(str(exc)) or type(exc).__name__}")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise _api_error(response)
        return response

    def submit(self, body: dict, idempotency_key: str | None = None) -> dict:
        """POST /v1/jobs; the accepted response: ``{id, status, links}``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/v1/jobs", json=body, headers=headers).json()

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def follow(self, job_id: str, on_event: Callable[[dict], None] | None = None) -> dict:
        """Stream the job's events (``progress`` to ``on_event``) and return the ``final`` job record."""
        timeout = httpx.Timeout(self.timeout, read=None)  # a queued job may wait long between events
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as stream:
                if stream.is_error:
                    stream.read()
                    raise _api_error(stream)
                for name, data in sse_events(stream):
                    if name == "final":
                        return data
                    if on_event is not None:
                        on_event(data)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        raise ClientError(f"the event stream of job {job_id} ended without a final event")

    def image(self, job_id: str, index: int, boxes: bool = False) -> bytes:
        """The PNG of image ``index`` of the job; ``boxes``: with the detections drawn."""
        params = {"boxes": "true"} if boxes else None
        return self._request("GET", f"/v1/jobs/{job_id}/images/{index}", params=params).content

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
