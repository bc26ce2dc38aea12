from __future__ import annotations

import hashlib
import io
import json

import pytest
from django.core.management import call_command

from apps.tenancy.models import ApiKey, Environment
from tests.assertions import assert_error

pytestmark = pytest.mark.django_db


def test_create_environment_prints_keys_once_and_stores_hashes(anon_api):
    out = io.StringIO()
    call_command("create_environment", "production", "--project", "Acme", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert set(data) == {"environment", "secret_key", "publishable_key", "inbox_hmac_secret"}
    assert data["secret_key"].startswith("sk_") and data["publishable_key"].startswith("pk_")
    environment = Environment.objects.get(pk=data["environment"]["id"])
    assert environment.project.name == "Acme"
    assert environment.inbox_hmac_secret == data["inbox_hmac_secret"]

    stored = {key.kind: key for key in ApiKey.objects.filter(environment=environment)}
    for kind, raw in [("secret", data["secret_key"]), ("publishable", data["publishable_key"])]:
        key = stored[kind]
        assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
        assert raw not in {key.prefix, key.last_four, key.name}
        assert raw.startswith(key.prefix) and raw.endswith(key.last_four)

    response = anon_api.get("/api/v1/subscribers", HTTP_AUTHORIZATION=f"Bearer {data['secret_key']}")
    assert response.status_code == 200


def test_environments_get_distinct_slugs_and_secrets():
    out1, out2 = io.StringIO(), io.StringIO()
    call_command("create_environment", "staging", "--json", stdout=out1)
    call_command("create_environment", "staging", "--json", stdout=out2)
    first, second = json.loads(out1.getvalue()), json.loads(out2.getvalue())
    assert first["environment"]["slug"] != second["environment"]["slug"]
    assert first["inbox_hmac_secret"] != second["inbox_hmac_secret"]
    assert first["secret_key"] != second["secret_key"]


def test_schema_and_docs_need_no_key(anon_api):
    assert anon_api.get("/api/schema/").status_code == 200
    assert anon_api.get("/api/docs/").status_code == 200


def test_unknown_api_path_answers_in_the_envelope(api):
    assert_error(api.get("/api/v1/nothing-here"), 404, "not_found")
