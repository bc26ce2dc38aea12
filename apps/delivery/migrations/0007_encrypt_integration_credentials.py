"""Integration.credentials encrypted at rest: the column becomes text holding a Fernet token.

Existing rows are encrypted with the first of CLARION_ENCRYPTION_KEYS; reversing decrypts them
and turns the column back into JSON.
"""

from typing import Any

from django.db import migrations

from apps.core import fields as encrypted


def encrypt(apps: Any, schema_editor: Any) -> None:
    encrypted.columns_encrypt(schema_editor.connection, apps.get_model("delivery", "Integration"), ["credentials"])


def decrypt(apps: Any, schema_editor: Any) -> None:
    encrypted.columns_decrypt(schema_editor.connection, apps.get_model("delivery", "Integration"), ["credentials"])


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0006_message_in_doubt"),
    ]

    operations = [
        migrations.AlterField(
            model_name="integration",
            name="credentials",
            field=encrypted.EncryptedJSONField(
                blank=True, default=dict, help_text="Secrets, encrypted at rest: never returned by the API"
            ),
        ),
        migrations.RunPython(encrypt, decrypt),
    ]
