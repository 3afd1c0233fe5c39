"""wrk, a compiled HTTP load generator (Debian's ``wrk`` package), driven by the benchmarks.

A Python load generator on the same cores as the API eats the CPU it is measuring; wrk's event loop in C
does not. Its requests come from small Lua scripts (``SUBMIT``: POSTs with distinct seeds; ``STATUS``: GETs
of a set of job ids, round robin), both sending the API key; ``--latency`` prints the percentiles.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# Each thread numbers its requests from its own base, so seeds never repeat across threads or runs.
SUBMIT = """
local n, base = 0, 0
local threads = 0
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  wrk.headers["Content-Type"] = "application/json"
  base = tonumber(args[2]) + index * 100000000
end
function request()
  n = n + 1
  return wrk.format("POST", "/v1/jobs", nil, [[%(body_prefix)s]] .. (base + n) .. "}")
end
"""

STATUS = """
local ids, n = {}, 0
local threads = 0
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  for line in io.lines(args[2]) do ids[#ids + 1] = line end
  n = index * 7
end
function request()
  n = n + 1
  return wrk.format("GET", "/v1/jobs/" .. ids[(n %% #ids) + 1])
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass
class Load:
    """One wrk run: requests per second and latency percentiles (ms); ``errors``: non-2xx/3xx responses
    plus socket errors."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def to_dict(self) -> dict:
        return asdict(self)


def binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("this benchmark needs wrk, a compiled HTTP load generator: `apt-get install wrk` "
                           "(scripts/_env.sh's ensure_wrk does it as root)")
    return path


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return round(float(number) * _UNITS[unit], 3)


def parse(output: str) -> Load:
    """The figures of wrk's ``--latency`` report."""
    done = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if done is None:
        raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(requests=int(done.group(1)), seconds=round(_milliseconds(done.group(2)) / 1000, 3),
                rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
                p50_ms=_milliseconds(re.search(r"\s50%\s+([\d.]+\w+)", output).group(1)),
                p99_ms=_milliseconds(re.search(r"\s99%\s+([\d.]+\w+)", output).group(1)),
                errors=errors + (int(non_2xx.group(1)) if non_2xx else 0))


def run(url: str, script: str, args: list[str], folder: Path, connections: int = 32, seconds: float = 5.0,
        threads: int = 1) -> Load:
    """``script`` (Lua) against ``url`` for ``seconds`` over ``connections`` kept-alive connections."""
    path = folder / f"wrk-{abs(hash(script))}.lua"
    path.write_text(script)
    command = [binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s", "--latency",
               "-s", str(path), url, "--", *args]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if output.returncode != 0:
        raise RuntimeError(f"wrk exited with {output.returncode}: {output.stderr[-2000:]}")
    return parse(output.stdout)


def submit_script(body: dict) -> str:
    """``SUBMIT`` posting ``body`` with ``"seed"`` set per request."""
    prefix = json.dumps({k: v for k, v in body.items() if k != "seed"}, separators=(",", ":"))[:-1] + ',"seed":'
    if "]]" in prefix:
        raise ValueError("the body cannot contain ']]' (a Lua long string)")
    return SUBMIT % {"body_prefix": prefix}


def status_script() -> str:
    return STATUS % {}
