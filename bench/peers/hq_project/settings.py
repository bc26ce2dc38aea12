"""A tiny Django project around django-notifications-hq: only what ``notify.send`` needs.

Runs in bench/peers/.venv (its own Django), never in Clarion's virtualenv. The database comes
from ``PEER_DATABASE_URL`` (PostgreSQL; the same server as Clarion's run).
"""

import os
from urllib.parse import urlsplit

_url = urlsplit(os.environ["PEER_DATABASE_URL"])

SECRET_KEY = "peer-bench-only"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "notifications",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "postgres",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
