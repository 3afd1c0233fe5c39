"""Where token files live durably: a local directory (``TokenDirectory``, the default) or the object store
(``TokenObjects``, with ``TALLY_STORE``), behind one small interface (``TokenFiles``); ``TokenStore`` (``tokens``)
indexes and caches them in Redis."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from optimization.token_file import SUFFIX, TokenKey, validate_token, write_atomic

from .objects import TOKENS, ObjectStore, store_from_settings
from .settings import Settings


class StoreUnavailable(Exception):
    """The durable token store refuses a write (read-only, full, no permission); the message says why."""


def checked(data: bytes) -> dict:
    """``token_info`` of a token file checked whole (layout, finite values) without a model at hand: what the
    store accepts from any source (an import, a learned token, its directory, its bucket). A model's own
    limits (classes, widths, norms) are checked where the model is known: the import route, ``token_for``."""
    return validate_token(data, classes=None, max_count=1_000)


class TokenFiles(Protocol):
    """The durable layer: one file per key id. Every method parses the id first (``TokenKey.parse``:
    InvalidRequest for anything else), so an id never names a file or object outside the library."""

    def read(self, key_id: str) -> bytes | None: ...

    def write(self, key_id: str, data: bytes) -> None: ...

    def remove(self, key_id: str) -> bool:
        """Delete the file; whether there was one."""

    def ids(self) -> list[str]:
        """The names of the files there (not yet validated: a foreign name fails ``read``)."""

    def location(self, key_id: str) -> str:
        """Where the key's file is, for people (a path, or the store and object key)."""


class TokenDirectory:
    """A local directory (the default; shared across hosts only through a shared volume)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, key_id: str) -> Path:
        return self.directory / TokenKey.parse(key_id).filename

    def read(self, key_id: str) -> bytes | None:
        path = self.path(key_id)
        return path.read_bytes() if path.is_file() else None

    def write(self, key_id: str, data: bytes) -> None:
        try:
            write_atomic(self.path(key_id), data)
        except OSError as exc:  # read-only, full, no permission: nothing half-written stays (``write_atomic``)
            raise StoreUnavailable(f"the token directory refuses writes: {exc.strerror or exc}") from None

    def remove(self, key_id: str) -> bool:
        path = self.path(key_id)
        existed = path.is_file()
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"the token directory refuses deletes: {exc.strerror or exc}") from None
        return existed

    def ids(self) -> list[str]:
        return sorted(p.name.removesuffix(SUFFIX) for p in self.directory.glob(f"*{SUFFIX}"))

    def __str__(self) -> str:
        return str(self.directory)

    def location(self, key_id: str) -> str:
        return str(self.path(key_id))


class TokenObjects:
    """The object store's ``tokens/`` (``TALLY_STORE``): one library for every host. A put is atomic there."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def key(self, key_id: str) -> str:
        return TOKENS + TokenKey.parse(key_id).filename

    def read(self, key_id: str) -> bytes | None:
        return self.store.get(self.key(key_id))

    def write(self, key_id: str, data: bytes) -> None:
        with _store_errors("writes"):
            self.store.put(self.key(key_id), data, "application/octet-stream")

    def remove(self, key_id: str) -> bool:
        key = self.key(key_id)
        with _store_errors("deletes"):
            existed = self.store.get(key) is not None
            self.store.delete(key)
        return existed

    def ids(self) -> list[str]:
        names = (k[len(TOKENS):] for k in self.store.list(TOKENS))
        return [n.removesuffix(SUFFIX) for n in names if n.endswith(SUFFIX) and "/" not in n]

    def __str__(self) -> str:
        return f"{self.store!r} {TOKENS}"

    def location(self, key_id: str) -> str:
        return f"{self.store!r} {self.key(key_id)}"


@contextmanager
def _store_errors(what: str):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise StoreUnavailable(f"the object store refuses {what}: {str(exc)[:200]}") from None


def files_for(settings: Settings) -> TokenFiles:
    """The configured durable layer: the object store's ``tokens/`` with ``TALLY_STORE``, else ``tokens_path``."""
    store = store_from_settings(settings)
    return TokenObjects(store) if store is not None else TokenDirectory(settings.tokens_path)
