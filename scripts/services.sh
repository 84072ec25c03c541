#!/usr/bin/env bash
# Starts the Redis and PostgreSQL servers the test suite talks to, when they
# are not already up. End-to-end tests use the real servers, never mocks.
set -euo pipefail

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    mkdir -p /tmp/loracle-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
      --appendonly no --dir /tmp/loracle-redis --logfile /tmp/loracle-redis/redis.log
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  fi
fi
redis_up && echo "redis: up on 127.0.0.1:6379" || echo "redis: not available"

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 50); do pg_up && break; sleep 0.1; done
  fi
fi
pg_up && echo "postgresql: up on 127.0.0.1:5432" || echo "postgresql: not available"
