"""A small client for the Tally API: submit a job and follow its Server-Sent Events to the end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx


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


def follow_job(url: str, body: dict, on_event: Callable[[dict], None] | None = None, timeout: float = 3600) -> dict:
    """POST the job, then stream its events; returns the final job record (or the API's error)."""
    with httpx.Client(base_url=url, timeout=timeout) as client:
        created = client.post("/v1/jobs", json=body)
        if created.status_code != 202:
            return created.json()
        with client.stream("GET", f"/v1/jobs/{created.json()['id']}/events") as stream:
            for name, data in sse_events(stream):
                if name == "final":
                    return data
                if on_event:
                    on_event(data)
    raise RuntimeError("the event stream ended without a final event")
