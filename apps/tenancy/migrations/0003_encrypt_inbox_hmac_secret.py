"""Environment.inbox_hmac_secret encrypted at rest: the column becomes text holding a Fernet token.

Existing rows are encrypted with the first of CLARION_ENCRYPTION_KEYS; reversing decrypts them.
"""

from typing import Any

from django.db import migrations

import apps.tenancy.models
from apps.core import fields as encrypted


def encrypt(apps: Any, schema_editor: Any) -> None:
    encrypted.columns_encrypt(schema_editor.connection, apps.get_model("tenancy", "Environment"), ["inbox_hmac_secret"])


def decrypt(apps: Any, schema_editor: Any) -> None:
    encrypted.columns_decrypt(schema_editor.connection, apps.get_model("tenancy", "Environment"), ["inbox_hmac_secret"])


class Migration(migrations.Migration):
    dependencies = [
        ("tenancy", "0002_environment_inbox_session_version"),
    ]

    operations = [
        migrations.AlterField(
            model_name="environment",
            name="inbox_hmac_secret",
            field=encrypted.EncryptedTextField(default=apps.tenancy.models._new_inbox_secret),
        ),
        migrations.RunPython(encrypt, decrypt),
    ]
