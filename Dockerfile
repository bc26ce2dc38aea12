# syntax=docker/dockerfile:1
# Clarion production image: one image for every process (web, worker, migrate).
#   docker build -t clarion .
#   web:     uvicorn config.asgi:application --host 0.0.0.0 --port 8000   (the default command)
#   worker:  python manage.py clarion_worker
#   migrate: python manage.py migrate --noinput
# Configuration comes from the environment only (docs/deployment.md); see docker-compose.yml.

ARG PYTHON_VERSION=3.12

# ---- build: the dependencies, pinned in pyproject.toml, into a virtualenv ----
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only the pinned dependencies (this layer is rebuilt only when pyproject.toml changes): the
# project is installed from a stub and removed again; its code runs from /app in the runtime stage.
COPY pyproject.toml README.md ./
RUN mkdir -p apps config && touch apps/__init__.py config/__init__.py \
    && pip install . \
    && pip uninstall -y clarion

# ---- runtime: the virtualenv, the source tree, a non-root user ----
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=config.settings \
    CLARION_VAR_DIR=/var/lib/clarion \
    PORT=8000
RUN groupadd --system --gid 10001 clarion \
    && useradd --system --uid 10001 --gid clarion --home-dir /app --shell /usr/sbin/nologin clarion \
    && mkdir -p /var/lib/clarion \
    && chown clarion:clarion /var/lib/clarion
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The application runs from the source tree: manage.py, apps, config, templates, static, locale, docs.
COPY manage.py ./
COPY apps ./apps
COPY config ./config
COPY templates ./templates
COPY static ./static
COPY locale ./locale
# The guides, served at /docs/ by the running application.
COPY docs ./docs
# Static files collected at build time into $CLARION_VAR_DIR/static (served by WhiteNoise). The
# settings refuse to load without keys: throwaway values for this one command, never kept.
RUN SECRET_KEY=collectstatic-only-not-a-secret \
    CLARION_ENCRYPTION_KEYS=Y29sbGVjdHN0YXRpYy1vbmx5LW5vdC1hLXNlY3JldC0= \
    python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q apps config \
    && chown -R clarion:clarion /var/lib/clarion

USER clarion:clarion
EXPOSE 8000
# Liveness of the web process (no dependencies checked; /readyz checks them). The worker
# overrides it with `manage.py clarion_health` (docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import http.client, os, sys; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('PORT', '8000')), timeout=4); c.request('GET', '/healthz'); sys.exit(0 if c.getresponse().status == 200 else 1)"]
# The web process (the Procfile's `web`). uvicorn reads WEB_CONCURRENCY (worker processes) and
# FORWARDED_ALLOW_IPS (a proxy to trust for X-Forwarded-*) from the environment; `exec` lets
# SIGTERM reach uvicorn itself.
CMD ["sh", "-c", "exec uvicorn config.asgi:application --host 0.0.0.0 --port \"${PORT}\""]
