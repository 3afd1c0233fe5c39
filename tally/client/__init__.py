"""A typed client for the Tally API: ``Client`` (blocking) and ``AsyncClient`` (asyncio), both over httpx.

    with Client("http://127.0.0.1:8000", api_key) as tally:
        job, images = tally.generate("a photo of red circles", 3, on_progress=print)

Responses are the API's own pydantic models (``service.schemas``), so the client and the server cannot drift.
Every failure is a ``ClientError`` — the API's ``{code, message}`` with its HTTP status, as a subclass per
kind (``NotFound``, ``Invalid``, ``Unauthorized``, ``Forbidden``, ``RateLimited``, ``Conflict``,
``Unavailable``, ``ServerError``), or ``Unreachable`` when no answer came; the CLI shows it as one line
with its ``exit_status``. Importing this package loads neither Redis's client nor RQ (nor any of the server).

Modules: ``clients`` (the two clients), ``calls`` (what each call sends and how its answer is read, the
event stream), ``errors``.
"""

from service.schemas import JobAccepted, JobEvent, JobOut

from .calls import sse_events, to_image
from .clients import AsyncClient, Client, OnProgress
from .errors import (ClientError, Conflict, Forbidden, Invalid, NotFound, RateLimited, ServerError, Unauthorized,
                     Unavailable, Unreachable, api_error)

__all__ = ["AsyncClient", "Client", "ClientError", "Conflict", "Forbidden", "Invalid", "JobAccepted", "JobEvent",
           "JobOut", "NotFound", "OnProgress", "RateLimited", "ServerError", "Unauthorized", "Unavailable",
           "Unreachable", "api_error", "sse_events", "to_image"]
