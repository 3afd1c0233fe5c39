"""The ``tally`` command: verbs mirroring the library, grouped by module (serve, generate/optimize, tokens,
reference, bench, report); each command is a thin shell over library functions, with rich progress and ``--json``."""

from . import bench, generate, jobs, keys, reference, report, serve, tokens  # noqa: F401  (each registers its commands)
from .common import app, main

__all__ = ["app", "main"]
