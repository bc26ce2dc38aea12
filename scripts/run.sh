#!/usr/bin/env bash
# Run the web process (uvicorn: HTTP + websockets) and the worker (django-q2 qcluster plus the ticker: manage.py clarion_worker) together
# in the foreground. Ctrl-C stops both; if either exits, the other is stopped and this script
# exits non-zero. Used by `make run`.
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# The demo inbox page shows the demo environment's keys: fine on a developer's machine only.
export CLARION_DEMO_PAGE=${CLARION_DEMO_PAGE:-1}
export HOST=${HOST:-127.0.0.1}
export PORT=${PORT:-8000}
# Links in emails (preference center, List-Unsubscribe) and Twilio's signed callback URLs are built
# from the public URL: unless it is given (environment or .env), the address this run serves.
CLARION_PUBLIC_URL=${CLARION_PUBLIC_URL:-$("$PY" scripts/banner.py --public-url)}
export CLARION_PUBLIC_URL
STOP_TIMEOUT=${STOP_TIMEOUT:-10}

web=""
worker=""

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

stop_all() {
  local pid i
  # SIGTERM to the leaders only: qcluster stops its own children (a SIGTERM to its whole
  # group at once leaves it hanging); whatever is left after the timeout gets SIGKILL.
  for pid in $web $worker; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for i in $(seq 1 $((STOP_TIMEOUT * 10))); do
    if ! alive "$web" && ! alive "$worker"; then break; fi
    sleep 0.1
  done
  for pid in $web $worker; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}

on_signal() {
  trap - INT TERM
  echo
  echo "run: stopping web and worker..."
  stop_all
  exit 130
}
trap on_signal INT TERM

# Job control: each background job gets its own process group, so we can signal a process
# together with everything it forked (qcluster starts a sentinel, workers, a monitor, a pusher).
set -m

# WEB_CONCURRENCY: uvicorn processes (≈ cores). One process runs one thread of Python at a time,
# so it gives the API at most one core (docs/deployment.md, "Web concurrency").
"$PY" -m uvicorn config.asgi:application --host "$HOST" --port "$PORT" --workers "${WEB_CONCURRENCY:-1}" &
web=$!
"$PY" manage.py clarion_worker &
worker=$!
# The process groups are set; no job-status chatter ("[1]- Terminated ...") from here on.
set +m

# Print the banner once the web process accepts connections, so it is not scrolled away by
# start-up logs (BANNER=0 turns it off).
if [ "${BANNER:-1}" != 0 ]; then
  probe_host=$HOST
  case "$probe_host" in 0.0.0.0 | :: | "[::]") probe_host=127.0.0.1 ;; esac
  for _ in $(seq 1 300); do
    alive "$web" && alive "$worker" || break
    if (exec 3<>"/dev/tcp/$probe_host/$PORT") 2>/dev/null; then
      "$PY" scripts/banner.py || true
      break
    fi
    sleep 0.1
  done
fi

# Wait for the first of the two to exit.
wait -n "$web" "$worker"
status=$?
trap - INT TERM
if alive "$web"; then which=worker; else which=web; fi
echo "run: the $which process exited (status $status); stopping the other one" >&2
stop_all
[ "$status" -eq 0 ] && status=1
exit "$status"
