"""Re-encrypt every secret stored encrypted (apps.core.fields) with the first of CLARION_ENCRYPTION_KEYS.

Rotation: put the new key first (``CLARION_ENCRYPTION_KEYS=new,old``) on every process, run this
once, then drop the old key.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.core.fields import encrypted_rows_rotate


class Command(BaseCommand):
    help = "Re-encrypt every encrypted value (provider credentials, inbox HMAC secrets) with the first key."

    def handle(self, *args: Any, **options: Any) -> None:
        rewritten = encrypted_rows_rotate()
        self.stdout.write(f"Re-encrypted {rewritten} rows with the first key of CLARION_ENCRYPTION_KEYS.")
