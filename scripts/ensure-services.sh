#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer, starting the local
# Debian services if they are down, and create the base database `clarion` if it is missing.
# Used by `make test-services` and .ci/run. Idempotent.
set -euo pipefail

PGHOST_ADDR=${PGHOST_ADDR:-127.0.0.1}
PGPORT_NUM=${PGPORT_NUM:-5432}
PGUSER_NAME=${PGUSER_NAME:-postgres}
REDIS_PORT=${REDIS_PORT:-6379}
DB_NAME=${CLARION_SERVICES_DB:-clarion}

pg_up() { pg_isready -q -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U "$PGUSER_NAME" 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

wait_for() {  # wait_for NAME CHECK_FUNCTION
  local name=$1 check=$2 i
  for i in $(seq 1 60); do
    if "$check"; then return 0; fi
    sleep 0.5
  done
  echo "ensure-services: $name did not come up within 30 s" >&2
  return 1
}

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ]; then
    echo "ensure-services: PostgreSQL is not reachable on $PGHOST_ADDR:$PGPORT_NUM and no local cluster is installed" >&2
    exit 1
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  echo "ensure-services: starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL pg_up
fi

if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "ensure-services: Redis is not reachable on 127.0.0.1:$REDIS_PORT and redis-server is not installed" >&2
    exit 1
  fi
  echo "ensure-services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
  wait_for Redis redis_up
fi

# pytest-django creates test_<name> itself; the base database only needs to exist for tools.
if ! psql -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U "$PGUSER_NAME" -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
  createdb -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U "$PGUSER_NAME" "$DB_NAME" || true
fi

echo "ensure-services: PostgreSQL and Redis are up"
