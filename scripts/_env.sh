# Shared set-up of scripts/demo and scripts/test: idempotent, safe to run on every call.
# - a virtual environment at .venv with Tally installed (re-installed when pyproject.toml changes)
# - offline by default: the reference world needs no hub (unset HF_HUB_OFFLINE/YOLO_OFFLINE for hub models)
# - ensure_redis: a Redis server answering at TALLY_REDIS_URL, started under .tally/redis if none does
# - ensure_chromium: Debian's Chromium at /usr/bin/chromium, for the browser tests (Playwright downloads no browser)
# - ensure_iproute2: `ip`, for the multi-host test's network namespaces (tests/netns.py)
# - ensure_wrk: wrk, the compiled HTTP load generator of `tally bench service` (and tests/test_wrk.py)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export TALLY_RUNTIME_DIR="${TALLY_RUNTIME_DIR:-$ROOT/.tally}"
export TALLY_REDIS_URL="${TALLY_REDIS_URL:-redis://127.0.0.1:6379/0}"
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$TALLY_RUNTIME_DIR/ultralytics}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" YOLO_OFFLINE="${YOLO_OFFLINE:-1}"
mkdir -p "$TALLY_RUNTIME_DIR"

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if [ ! -f .venv/.tally-installed ] || [ pyproject.toml -nt .venv/.tally-installed ]; then
  echo "==> installing Tally and its dependencies into .venv (torch comes from local wheels)"
  python -m pip install -q --upgrade pip
  python -m pip install -q -e '.[test]'
  touch .venv/.tally-installed
fi

ensure_redis() {
  if python -c "import os, redis; redis.Redis.from_url(os.environ['TALLY_REDIS_URL'], socket_timeout=2).ping()" 2>/dev/null; then
    return 0
  fi
  if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "==> installing redis-server with apt"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      echo "error: no Redis answers at $TALLY_REDIS_URL and redis-server is not installed." >&2
      echo "       install it (e.g. 'sudo apt-get install redis-server') or point TALLY_REDIS_URL at one." >&2
      return 1
    fi
  fi
  local port
  port="$(python -c "import os, urllib.parse as u; print(u.urlparse(os.environ['TALLY_REDIS_URL']).port or 6379)")"
  mkdir -p "$TALLY_RUNTIME_DIR/redis"
  echo "==> starting redis-server on 127.0.0.1:$port (data in $TALLY_RUNTIME_DIR/redis)"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$TALLY_RUNTIME_DIR/redis" --appendonly yes \
    --daemonize yes --logfile "$TALLY_RUNTIME_DIR/redis/redis.log" --pidfile "$TALLY_RUNTIME_DIR/redis/redis.pid"
  for _ in $(seq 50); do
    python -c "import os, redis; redis.Redis.from_url(os.environ['TALLY_REDIS_URL']).ping()" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: redis-server did not answer on port $port; see $TALLY_RUNTIME_DIR/redis/redis.log" >&2
  return 1
}

# A Debian package for the tests, installed with apt when run as root; otherwise a warning naming what fails.
apt_install() {  # package, why it is needed, what fails without it
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing $1 with apt ($2)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
      || echo "warning: apt could not install $1; $3 will fail." >&2
  else
    echo "warning: no $1; $3 will fail (install it: 'sudo apt-get install $1')." >&2
  fi
}

ensure_chromium() {
  local chromium="${TALLY_CHROMIUM:-/usr/bin/chromium}"
  if [ -x "$chromium" ]; then
    return 0
  fi
  if [ -n "${TALLY_CHROMIUM:-}" ]; then  # a binary the user chose: not ours to replace
    echo "warning: no Chromium at $chromium; tests/test_browser.py will fail." >&2
    return 0
  fi
  apt_install chromium "the browser tests drive it headless" tests/test_browser.py
}

ensure_iproute2() {
  command -v ip >/dev/null || apt_install iproute2 "the multi-host test makes its hosts with ip netns" \
    tests/test_multihost.py
}

ensure_openapi_client_generator() {
  # A client generator, in a venv of its own: it pins httpx and typer below this project's.
  local tool="$ROOT/.tools/openapi-python-client"
  [ -x "$tool/bin/openapi-python-client" ] && return
  echo "==> installing openapi-python-client in .tools/ (tests/test_client.py generates a client with it)"
  python3 -m venv "$tool" && "$tool/bin/pip" install -q "openapi-python-client>=0.29,<0.30"
}

ensure_wrk() {
  command -v wrk >/dev/null || apt_install wrk "the service benchmark's load generator" \
    "tally bench service and tests/test_wrk.py"
}
