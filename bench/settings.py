"""Settings for benchmark processes: Clarion's own settings plus the ingest baselines' URLs (bench.urls).

Used by the uvicorn server of the ingest benchmark and by the in-process fan-out benchmark
(``DJANGO_SETTINGS_MODULE=bench.settings``). Nothing else differs from ``config.settings``.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
