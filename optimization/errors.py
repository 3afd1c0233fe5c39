"""The one domain error: bad input from whoever called (a request, a command line, a token file).

Only ``InvalidRequest`` becomes an HTTP 422 or exit status 2; any other exception is a bug and is reported
as one (job error ``internal``, CLI exit status 1 with the traceback written to a file).
"""


class InvalidRequest(ValueError):
    """Bad input; the message says what is wrong and what is allowed."""


class DegenerateOutput(RuntimeError):
    """The model drew nothing usable (every candidate not finite or one flat colour): a broken model or
    token, not bad input. A job ends failed with ``degenerate_image``."""
