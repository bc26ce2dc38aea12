"""Clarion settings: one module, driven by environment variables (django-environ).

Without DATABASE_URL / REDIS_URL Clarion runs on the embedded default: SQLite files under
``var/``, the django-q2 ORM broker and the channels-lite layer. With them it runs on
PostgreSQL, the django-q2 Redis broker and channels-redis. Nothing else differs.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from csp.constants import NONCE
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env.str("CLARION_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)
# No default: every process refuses to start without a key of its own. `make run` / `make migrate`
# / `make seed` export a random one kept in var/secret_key; pytest sets one (pyproject.toml).
SECRET_KEY = env.str("SECRET_KEY", default="")
# Old keys still accepted for signatures (preference links, inbox tokens) while rotating keys.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
# The key older releases fell back to: public, so as good as none.
_public_development_keys = frozenset({"clarion-insecure-development-key-change-me-in-production"})
if not SECRET_KEY or SECRET_KEY in _public_development_keys:
    raise ImproperlyConfigured(
        "SECRET_KEY is "
        + ("not set" if not SECRET_KEY else "the public development key")
        + ". Set the SECRET_KEY environment variable to a long random value, the same for every web and "
        "worker process (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(50))'). "
        "`make run`, `make migrate` and `make seed` use one kept in var/secret_key."
    )
if _public_development_keys.intersection(SECRET_KEY_FALLBACKS):
    raise ImproperlyConfigured("SECRET_KEY_FALLBACKS holds the public development key; remove it.")
# Provider credentials and inbox HMAC secrets are encrypted at rest (apps.core.fields): Fernet
# keys, the first encrypts, all decrypt; `manage.py rotate_encryption_key` re-encrypts with the
# first. No default, like SECRET_KEY: `make run` keeps one in var/encryption_key, pytest sets one.
CLARION_ENCRYPTION_KEYS = env.list("CLARION_ENCRYPTION_KEYS", default=[])
for _key in CLARION_ENCRYPTION_KEYS or [""]:
    try:
        Fernet(_key)
    except ValueError:
        raise ImproperlyConfigured(
            "CLARION_ENCRYPTION_KEYS is "
            + ("not set" if not CLARION_ENCRYPTION_KEYS else "not a list of Fernet keys (32 url-safe base64 bytes)")
            + ". Set it to one or more comma-separated Fernet keys, the same for every web and worker process "
            "(a new one: python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'). "
            "The first key encrypts, every key decrypts. `make run`, `make migrate` and `make seed` use one kept "
            "in var/encryption_key."
        ) from None
# Outbound requests to customer-configured URLs never reach private, loopback, link-local or
# metadata addresses (apps.core.net) except in these networks (CIDRs, comma-separated).
CLARION_ALLOWED_PRIVATE_NETWORKS = env.list("CLARION_ALLOWED_PRIVATE_NETWORKS", default=[])
for _network in CLARION_ALLOWED_PRIVATE_NETWORKS:
    try:
        ipaddress.ip_network(_network.strip(), strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"CLARION_ALLOWED_PRIVATE_NETWORKS: {_network!r} is not a network in CIDR notation (e.g. 10.0.0.0/8)"
        ) from None
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# /demo/inbox/ shows the demo environment's keys: on for `make run`, off unless asked for.
CLARION_DEMO_PAGE = env.bool("CLARION_DEMO_PAGE", default=DEBUG)
PUBLIC_URL = env.str("CLARION_PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")

# HTTPS (docs/deployment.md): on by default when the public URL is https://, each one overridable.
_https = PUBLIC_URL.startswith("https://")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=_https)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=_https)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=_https)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if _https else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_https)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=_https)
# The header a TLS-terminating proxy sets to "https", e.g. X-Forwarded-Proto. Only behind a proxy
# that always sets (or strips) it: otherwise clients could claim HTTPS themselves.
_proxy_ssl_header = env.str("SECURE_PROXY_SSL_HEADER", default="")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)

INSTALLED_APPS = [
    "modeltranslation",  # must precede django.contrib.admin
    # The console's theme (django-unfold); its templates must win over the admin's own. It runs
    # under the strict CSP below with Alpine's CSP build (templates/unfold/layouts/skeleton.html).
    "unfold",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, not a CDN
    "django_filters",
    "channels",
    "django_q",
    "anymail",
    "axes",
    "apps.core",
    "apps.tenancy",
    "apps.subscribers",
    "apps.preferences",
    "apps.templates",
    "apps.workflows",
    "apps.events",
    "apps.delivery",
    "apps.inbox",
    "apps.demo",
    "apps.observability",
    "apps.analytics",
]

MIDDLEWARE = [
    # First: answers /healthz, /readyz and /metrics before host checks and redirects, times every
    # request by route, and starts each request with an empty log context (apps.observability).
    "apps.observability.middleware.request_metrics_middleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "apps.core.middleware.HostileInputMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Session and CSRF by their own paths: Django's deploy checks look for them by name. The Page*
    # classes are Django's, skipped on the server API's paths (apps.core.middleware).
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "apps.core.middleware.PageAuthenticationMiddleware",
    "apps.core.middleware.PageMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
SQLITE_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
    "init_command": (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000; PRAGMA temp_store=MEMORY;"
    ),
}
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'clarion.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = SQLITE_OPTIONS
else:
    # Persistent connections leak under ASGI (each request's sync work runs on a thread of its
    # own); Django's psycopg pool returns connections at the end of every request instead.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Each process has its own pool: apps.core.db drops inherited connections in forked workers.
    if env.bool("DB_POOL", default=True):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
            "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
            "timeout": env.int("DB_POOL_TIMEOUT", default=10),
        }
    # A connection the server dropped (restart, failover, idle kill) is discarded when it is taken
    # instead of being reused (with the pool: apps.core.db.check_pooled_connection, a round trip
    # only when the idle socket has something to read).
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USING_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

REDIS_URL = env.str("REDIS_URL", default="")

# 0: HTTP through Django's ASGI handler (a thread per request). N > 0: through its WSGI handler on
# N long-lived threads, for web processes that serve the API only, not websockets (config.asgi).
# Each thread holds at most one database connection at a time: keep N <= DB_POOL_MAX_SIZE.
WEB_HTTP_THREADS = env.int("WEB_HTTP_THREADS", default=0)

# --- Cache (rate-limit counters, apps.core.throttling) ------------------------------------------
if REDIS_URL:
    # Shared by every process. Its own key prefix; CACHE_REDIS_URL may name another Redis database.
    CACHES = {
        "default": {
            "BACKEND": "apps.core.cache.SharedRedisCache",
            "LOCATION": env.str("CACHE_REDIS_URL", default=REDIS_URL),
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="clarion-cache"),
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    # Per process: `make run` serves HTTP from one process, so its counters are the installation's.
    # A database cache would put a write under SQLite's one write lock on every API request.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "clarion",
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    }

# --- Channel layer --------------------------------------------------------------------------
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis with a waiting, bounded connection pool and batched group calls
            # (apps.inbox.layers): the stock pool raised MaxConnectionsError past 100 connections
            # in use, so a storm of websocket handshakes got HTTP 500.
            "BACKEND": "apps.inbox.layers.InboxChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, the same as channels-redis's
            # blocking BZPOPMIN (5 s): an idle consumer's receive then fails with "Timeout reading"
            # and its websocket closes (redis/redis-py#4091). Read longer than the block.
            # Capacity: every socket of one process shares ONE Redis list, so the default of 100
            # silently dropped frames of a broadcast beyond the 100th (found by bench websocket).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": env.str("CHANNELS_PREFIX", default="clarion"),
                "capacity": env.int("CHANNELS_CAPACITY", default=10000),
                # Redis connections per process (and event loop); callers beyond wait, up to the timeout.
                "max_connections": env.int("CHANNELS_MAX_CONNECTIONS", default=20),
                "pool_timeout": env.float("CHANNELS_POOL_TIMEOUT", default=30.0),
            },
        }
    }
else:
    # channels-lite keeps its rows in a SQLite file of its own so websocket chatter never
    # competes with the application's write lock.
    INSTALLED_APPS.append("channels_lite")
    DATABASES["channels"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(VAR_DIR / "channels.sqlite3"),
        "OPTIONS": SQLITE_OPTIONS,
    }
    DATABASE_ROUTERS = ["channels_lite.router.ChannelsRouter"]
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_lite.layers.core.SQLiteChannelLayer",
            "CONFIG": {"database": "channels", "polling_interval": 0.05, "capacity": 1000},
        }
    }

# --- Task queue (django-q2) -------------------------------------------------------------------
Q_CLUSTER: dict = {
    "name": "clarion",
    "workers": env.int("CLARION_WORKERS", default=2),
    "timeout": 300,
    "retry": 360,
    "max_attempts": 3,
    "ack_failures": True,
    "catch_up": False,
    # No Success row per finished task: with a limit, the monitor (one process for the whole
    # cluster) locks and loads every saved success, up to the limit, for each task it
    # acknowledges, then inserts a Task row. Failures are still saved.
    "save_limit": env.int("CLARION_TASK_SAVE_LIMIT", default=-1),
    # Tasks a worker runs before it is replaced (a fresh fork: new connections, cold caches).
    "recycle": env.int("CLARION_WORKER_RECYCLE", default=5000),
    "label": "Tasks",
    "poll": 0.2,
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
# Tests (and scripts) may run tasks inline instead of through the broker.
CLARION_TASKS_EAGER = env.bool("CLARION_TASKS_EAGER", default=False)

# --- Email -----------------------------------------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = str(VAR_DIR / "mail")
if env.str("EMAIL_URL", default=""):
    # e.g. smtp+tls://user:password@smtp.example.com:587 — Django's own backend for every
    # environment without an email integration of its own.
    vars().update(env.email_url("EMAIL_URL"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Clarion <notifications@localhost>")
ANYMAIL: dict = {}

# --- i18n ------------------------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("fr", "Français"), ("de", "Deutsch")]
MODELTRANSLATION_DEFAULT_LANGUAGE = "en"
MODELTRANSLATION_FALLBACK_LANGUAGES = ("en",)
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static ----------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG


# --- API -------------------------------------------------------------------------------------
def _rate(name: str, default: str) -> str | None:
    """A rate limit from the environment: "N/second|minute|hour|day", or "off"."""
    value = env.str(name, default=default).strip().lower()
    if value in ("off", "none", "0"):
        return None
    count, _, period = value.partition("/")
    if not count.isdigit() or period not in ("s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day"):
        raise ImproperlyConfigured(f'{name}={value!r}: use "N/second", "N/minute", "N/hour", "N/day" or "off".')
    return value


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apps.tenancy.auth.SecretKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["apps.tenancy.auth.HasEnvironment"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.core.parsers.StrictJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.pagination.IdCursorPagination",
    "DEFAULT_SCHEMA_CLASS": "apps.core.openapi.ClarionAutoSchema",
    # Rejects query parameters the operation does not declare (apps.core.query_params).
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "apps.core.query_params.StrictQueryContentNegotiation",
    "EXCEPTION_HANDLER": "apps.core.errors.api_exception_handler",
    # Rate limits (apps.core.throttling): each request counts against one scope, in one cache trip.
    "DEFAULT_THROTTLE_CLASSES": [
        "apps.core.throttling.TriggerRateThrottle",
        "apps.core.throttling.ManagementRateThrottle",
        "apps.core.throttling.InboxRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "trigger": _rate("CLARION_RATE_TRIGGER", "60000/minute"),
        "management": _rate("CLARION_RATE_MANAGEMENT", "30000/minute"),
        "inbox": _rate("CLARION_RATE_INBOX", "60000/minute"),
        "inbox_session_subscriber": _rate("CLARION_RATE_INBOX_SESSION_SUBSCRIBER", "60/minute"),
        "inbox_session_ip": _rate("CLARION_RATE_INBOX_SESSION_IP", "600/minute"),
    },
    # The client address is REMOTE_ADDR (behind a proxy, uvicorn's --forwarded-allow-ips sets it);
    # X-Forwarded-For is never trusted, or a client could pick its own rate-limit key.
    "NUM_PROXIES": 0,
    "UNAUTHENTICATED_USER": None,
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Clarion API",
    "DESCRIPTION": "Notification infrastructure: trigger events, manage subscribers, workflows, "
    "templates, preferences and the in-app inbox.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The error envelope on every operation (apps.core.schema).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.core.schema.error_responses_hook",
    ],
    # The same field names carry different choice sets across apps; name each set once.
    "ENUM_NAME_OVERRIDES": {
        "ChannelEnum": "apps.core.channels.CHANNEL_CHOICES",
        "TemplateChannelEnum": "apps.core.channels.CHANNELS",
        "BulkItemStatusEnum": ["accepted", "duplicate", "error"],
        "MessageStatusEnum": "apps.delivery.models.Message.Status",
    },
}
# Content-Security-Policy on every response (django-csp). No inline script anywhere: pages load
# their scripts from /static/. The one inline <style> (the preference center's brand colour) carries
# the request's nonce. The template editor's and layout's email previews (srcdoc iframes inherit
# this policy) add 'unsafe-inline' to style-src on those admin pages only: email HTML is styled
# inline by nature (apps.templates.admin).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", NONCE],
        # Logos and avatars are customers' URLs; Swagger UI draws its icons as data: URLs.
        "img-src": ["'self'", "data:", "https:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# The bulk endpoints take up to 1,000 items; single payloads are capped at 512 KB in the API.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=8 * 1024 * 1024)

CLARION = {
    "MAX_PAYLOAD_BYTES": 512 * 1024,
    "FANOUT_CHUNK_SIZE": env.int("CLARION_FANOUT_CHUNK_SIZE", default=500),
    # Micro-batches (apps/workflows/engine/batch.py): one wake-up claims up to EVENT_BATCH_SIZE
    # pending events; those with at most SMALL_EVENT_RECIPIENTS direct recipients are walked in the
    # same task, and up to INLINE_DELIVERY_MAX of their messages are delivered right after the commit.
    "EVENT_BATCH_SIZE": env.int("CLARION_EVENT_BATCH_SIZE", default=100),
    "SMALL_EVENT_RECIPIENTS": env.int("CLARION_SMALL_EVENT_RECIPIENTS", default=50),
    "INLINE_DELIVERY_MAX": env.int("CLARION_INLINE_DELIVERY_MAX", default=200),
    # A worker holds the runs (and the event fan-out) it works on for this long and renews the
    # lease every quarter of it while it works; a killed worker's runs resume once it runs out.
    "RUN_LEASE_SECONDS": env.int("CLARION_RUN_LEASE_SECONDS", default=20),
    # How often each worker host's ticker starts due work (delays, digest windows, retries, orphans).
    "TICK_SECONDS": env.float("CLARION_TICK_SECONDS", default=1.0),
    # A send whose heartbeat is older than this died with its worker: it goes in doubt (if it was
    # inside a provider call) or back to the queue. Provider timeouts are capped at a third of it.
    "SEND_HEARTBEAT_SECONDS": env.int("CLARION_SEND_HEARTBEAT_SECONDS", default=30),
    # clarion_worker restarts its task cluster when tasks wait and none started or finished for
    # this long (0: django-q2's task timeout + 60 s), e.g. after a worker killed while it held the
    # cluster's queue lock wedged the others.
    "WORKER_WEDGE_SECONDS": env.float("CLARION_WORKER_WEDGE_SECONDS", default=0),
    # A pending run not picked up for this long lost its wake-up (a killed cluster's prefetched
    # tasks, a Redis that restarted empty): the ticker enqueues it again, at most once per period.
    "STALL_SECONDS": env.int("CLARION_STALL_SECONDS", default=20),
    "INBOX_TOKEN_MAX_AGE": 60 * 60 * 12,
    # A web process remembers a secret key it authenticated for this long (apps/tenancy/keycache.py):
    # a key revoked by another process is refused by this one within it (docs/security.md). 0: off.
    "API_KEY_CACHE_SECONDS": env.float("CLARION_API_KEY_CACHE_SECONDS", default=10.0),
    # The savings report's default price of one message per channel (one segment for SMS), in each
    # environment's currency, when the channel's first integration has no price of its own
    # (apps/analytics/pricing.py, docs/analytics.md). Decimal strings.
    "MESSAGE_PRICES": {
        "in_app": env.str("CLARION_PRICE_IN_APP", default="0"),
        "email": env.str("CLARION_PRICE_EMAIL", default="0.0009"),
        "sms": env.str("CLARION_PRICE_SMS", default="0.0079"),
        "push": env.str("CLARION_PRICE_PUSH", default="0"),
        "chat": env.str("CLARION_PRICE_CHAT", default="0"),
        "webhook": env.str("CLARION_PRICE_WEBHOOK", default="0"),
    },
    "SWEEP_INTERVAL_MINUTES": 1,
}

# --- Logs, metrics, errors (docs/operations.md) -------------------------------------------------
# One formatter for every logger (Clarion's, Django's, uvicorn's, django-q2's): JSON lines with
# LOG_FORMAT=json, readable lines with time and level otherwise; both carry the bound context
# (environment, transaction_id, run_id, message_id: apps.observability.logs).
LOG_FORMAT = env.str("LOG_FORMAT", default="console").lower()
if LOG_FORMAT not in ("json", "console"):
    raise ImproperlyConfigured(f'LOG_FORMAT={LOG_FORMAT!r}: use "json" or "console".')
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"structured": {"()": "apps.observability.logs.formatter", "json": LOG_FORMAT == "json"}},
    "filters": {
        "no_probes": {"()": "apps.observability.logs.ProbeFilter"},
        "no_task_chatter": {"()": "apps.observability.logs.TaskChatterFilter", "keep": LOG_LEVEL == "DEBUG"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "structured"},
        "access": {"class": "logging.StreamHandler", "formatter": "structured", "filters": ["no_probes"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per accepted trigger request and per settled message (docs/operations.md).
        "clarion.activity": {"level": env.str("LOG_ACTIVITY_LEVEL", default=LOG_LEVEL).upper()},
        # django-q2 logs two to four INFO lines per task (and per sweeper run): dropped, errors kept.
        "django-q": {"filters": ["no_task_chatter"]},
        # uvicorn configures its loggers before Django starts; these take them over (same format),
        # and the access log drops the health and metrics probes.
        "uvicorn": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "uvicorn.error": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "uvicorn.access": {"handlers": ["access"], "level": LOG_LEVEL, "propagate": False},
    },
}
# GET /metrics: a bearer token and/or an allow-list of client networks (REMOTE_ADDR). Without a
# token only loopback may scrape; with one, any address holding it (narrow it with the list).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list(
    "METRICS_ALLOWED_NETWORKS", default=["0.0.0.0/0", "::/0"] if METRICS_TOKEN else ["127.0.0.0/8", "::1/128"]
)
for _network in METRICS_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network.strip(), strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"METRICS_ALLOWED_NETWORKS: {_network!r} is not a network in CIDR notation"
        ) from None
# clarion_worker serves its host's metrics on this port when set (hosts without a web process).
METRICS_WORKER_PORT = env.int("CLARION_METRICS_PORT", default=0)
METRICS_WORKER_ADDRESS = env.str("CLARION_METRICS_ADDRESS", default="127.0.0.1")
# Errors and traces to Sentry when SENTRY_DSN is set; sentry-sdk is not even imported otherwise.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    from apps.observability.sentry import sentry_init

    sentry_init(
        dsn=SENTRY_DSN,
        environment=env.str("SENTRY_ENVIRONMENT", default="production"),
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
    )

# --- The console's theme (django-unfold; docs/console.md) -----------------------------------------
# The sidebar groups pages by what people do, not by app (apps/core/console_navigation.py); a link
# shows only to staff who may view its page. The home is the dashboard (templates/admin/index.html).
UNFOLD = {
    "SITE_TITLE": "Clarion console",
    "SITE_HEADER": "Clarion",
    "SITE_SUBHEADER": "Notification console",
    "SITE_URL": "/",
    "SITE_SYMBOL": "campaign",
    "SHOW_HISTORY": True,
    "SHOW_VIEW_ON_SITE": False,
    "BORDER_RADIUS": "6px",
    "STYLES": ["apps.core.console_navigation.console_styles"],
    "SIDEBAR": {
        "show_search": False,
        "command_search": False,
        "show_all_applications": False,
        "navigation": "apps.core.console_navigation.sidebar",
    },
}

# Unfold's login form has no hidden "next" field (Django's has): a login straight from /admin/login/
# lands on the console's home instead of Django's default /accounts/profile/ (no such page).
LOGIN_REDIRECT_URL = "/admin/"

# --- Admin login lockout (django-axes) ---------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed logins of one username from one address lock that pair out for the cool-off time; the
# same client address as the API's rate limits (REMOTE_ADDR, never X-Forwarded-For).
AXES_FAILURE_LIMIT = env.int("CLARION_ADMIN_LOGIN_FAILURES", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("CLARION_ADMIN_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "apps.core.throttling.client_ip"
AXES_VERBOSE = False  # no banner on every start; failures and lockouts are still logged

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
