"""``tally keys ...``: API keys (shown once at creation; only their hashes are kept)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from optimization.errors import InvalidRequest

from .common import JsonOption, app, console, prepare, write_json

keys_app = typer.Typer(help="API keys: who may call the API, with which scope and quotas.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _store():
    from workers.auth import KeyStore
    from workers.queue import connect

    settings = prepare()
    return KeyStore(connect(settings), settings)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scope: Annotated[str, typer.Option(help="user (jobs, reading the library) or admin (also writing the library).")] = "user",
    rate_limit: Annotated[Optional[str], typer.Option(help="e.g. 60/minute; default: the deployment's.")] = None,
    max_active_jobs: Annotated[Optional[int], typer.Option(min=1, help="Queued + running jobs; default: the deployment's.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Create a key and print it: this is the only time it is shown."""
    secret, record = _store().create(name, scope, rate_limit=rate_limit, max_active_jobs=max_active_jobs)
    payload = {"key": secret, **{k: v for k, v in record.public().items() if k in ("id", "name", "scope")}}
    if json_path is not None:
        write_json(payload, json_path)
    else:
        console.print(f"key {record.id} ({record.name}, {record.scope}); shown only now:")
        sys.stdout.write(secret + "\n")


@keys_app.command("list")
def list_keys(as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False) -> None:
    """Every key's id, name, scope, quotas and whether it is revoked (never the key itself)."""
    records = [r.public() for r in _store().list()]
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return
    for r in records:
        console.print(f"{r['id']}  {r['name']}  {r['scope']}{'  REVOKED' if r['revoked'] else ''}", highlight=False)


@keys_app.command("revoke")
def revoke(id_or_name: Annotated[str, typer.Argument(help="The key's id or name.")]) -> None:
    """Revoke a key: it is refused from the next request on."""
    revoked = _store().revoke(id_or_name)
    if not revoked:
        raise InvalidRequest(f"no live key with id or name {id_or_name!r}")
    console.print(f"revoked {', '.join(r.id for r in revoked)}")
