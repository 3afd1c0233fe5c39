"""``tally tokens ...``: the token library, the same store the service lists (``GET /v1/tokens``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from optimization.errors import InvalidRequest

from .common import DEFAULTS, app, console, token_store

tokens_app = typer.Typer(help="The count-token library (files, indexed in Redis when it answers).",
                         no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("list")
def list_tokens(
    object_: Annotated[Optional[str], typer.Option("--object")] = None,
    count: Annotated[Optional[int], typer.Option(min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The library's tokens with their validation figures."""
    infos = token_store().list(object_=object_, count=count)
    if as_json:
        sys.stdout.write(json.dumps(infos, indent=2) + "\n")
        return
    for info in infos:
        validation = info["metadata"].get("validation") or {}
        validation = validation.get("admission", validation)  # the gate's figures where recorded
        token, base = validation.get("token") or {}, validation.get("base") or {}
        stating = f", stating {info['stated_count']}" if info.get("stated_count") is not None else ""
        kept = f", kept {info['metadata']['kept']}" if info["metadata"].get("kept") else ""
        console.print(f"{info['key']}: exact {base.get('exact')} -> {token.get('exact')} "
                      f"(n={token.get('n')}), {info['metadata'].get('mode', '?')}{stating}{kept}", highlight=False)
    console.print(f"{len(infos)} token(s)")


@tokens_app.command("prune")
def prune(
    min_gain: Annotated[float, typer.Option(min=-1, max=1, help="Held-out exact gain over the base a token must "
                                                                "have recorded to stay.")] = DEFAULTS.library.min_gain,
    max_gain_p: Annotated[float, typer.Option(min=0, max=1, help="... and the most often chance may explain it "
                                                                 "(1: off).")] = DEFAULTS.library.max_gain_p,
    dry_run: Annotated[bool, typer.Option(help="Only list what would go.")] = False,
) -> None:
    """Remove tokens that do not beat the base prompt (by their recorded validation) or are not library tokens."""
    store = token_store()
    doomed = store.unhelpful(min_gain, max_gain_p)
    for info in doomed:
        if not dry_run:
            store.delete(info["key"])
        metadata = info["metadata"]
        console.print(f"{'would remove' if dry_run else 'removed'} {info['key']} (mode {metadata.get('mode')}, "
                      f"gain {metadata.get('gain')}, p {metadata.get('gain_p')})", highlight=False)
    console.print(f"{len(doomed)} token(s) {'would be ' if dry_run else ''}removed; {len(store.list())} kept")


@tokens_app.command("import")
def import_token(path: Annotated[Path, typer.Argument(help="A Tally token file (.safetensors).")]) -> None:
    """Add a token file to the library."""
    if not path.is_file():
        raise InvalidRequest(f"token file not found: {path}")
    info = token_store().put(path.read_bytes())
    console.print(f"imported {info['key']}")


@tokens_app.command("delete")
def delete_token(key: Annotated[str, typer.Argument(help="OBJECT-COUNT-FINGERPRINT")]) -> None:
    """Remove a token from the library."""
    if not token_store().delete(key):
        raise InvalidRequest(f"no token {key!r}")
    console.print(f"deleted {key}")
