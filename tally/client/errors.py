"""Every failure of a call: the API's ``{code, message}`` with its HTTP status as one ``ClientError``
subclass per kind, or ``Unreachable`` when no answer came."""

from __future__ import annotations


import httpx

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


def one_line(text: str, limit: int = 300) -> str:
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
        return kind(one_line(str(body["message"])), str(body["code"]), response.status_code, retry_after)
    reason = one_line(response.text) or response.reason_phrase
    return kind(f"HTTP {response.status_code} from {response.request.url}: {reason}",
                f"http_{response.status_code}", response.status_code, retry_after)
