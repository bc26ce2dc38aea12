from __future__ import annotations

import pytest

from apps.workflows.models import Workflow, WorkflowVersion
from tests.assertions import assert_error
from tests.factories import CategoryFactory
from tests.workflows.conftest import published_template

pytestmark = pytest.mark.django_db

STEPS = [
    {"id": "inbox", "type": "in_app", "template": "ping"},
    {"id": "wait", "type": "delay", "for": "PT10M"},
    {"id": "mail", "type": "email", "template": "ping-mail", "if": "not steps.inbox.read"},
]


@pytest.fixture
def templates(tenant):
    published_template(tenant.environment, "ping", "in_app", title_en="Ping", body_en="")
    published_template(tenant.environment, "ping-mail", "email", subject_en="Ping", body_en="x")


def test_create_publish_and_version_history(api, tenant, templates):
    CategoryFactory(environment=tenant.environment, key="news")
    response = api.put("/api/v1/workflows/ping", {"name": "Ping", "category": "news", "steps": STEPS}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["published_version"] is None
    assert body["category"] == "news"

    published = api.post("/api/v1/workflows/ping/publish").json()
    assert published["published_version"]["number"] == 1
    assert published["published_version"]["category_key"] == "news"

    changed = [*STEPS[:2], {**STEPS[2], "if": "payload.urgent"}]
    response = api.put("/api/v1/workflows/ping", {"steps": changed, "publish": True}, format="json")
    assert response.status_code == 200
    assert response.json()["published_version"]["number"] == 2
    assert response.json()["name"] == "Ping"
    versions = api.get("/api/v1/workflows/ping/versions").json()["data"]
    assert [v["number"] for v in versions] == [2, 1]
    assert versions[1]["steps"] == STEPS  # versions are immutable snapshots


@pytest.mark.parametrize(
    ("steps", "path"),
    [
        ([{"id": "x", "type": "teleport"}], "steps[0].type"),
        ([{"id": "1bad", "type": "in_app", "template": "ping"}], "steps[0].id"),
        ([{"id": "a", "type": "in_app"}], "steps[0].template"),
        ([{"id": "a", "type": "delay", "for": "soon"}], "steps[0].for"),
        ([{"id": "a", "type": "delay", "for": "0s"}], "steps[0].for"),
        ([{"id": "a", "type": "in_app", "template": "ping", "if": "payload.("}], "steps[0].if"),
        ([{"id": "a", "type": "in_app", "template": "ping", "colour": "red"}], "steps[0]"),
        (
            [{"id": "a", "type": "in_app", "template": "ping"}, {"id": "a", "type": "delay", "for": "1m"}],
            "steps[1].id",
        ),
    ],
)
def test_invalid_steps_are_explained(api, templates, steps, path):
    error = assert_error(api.put("/api/v1/workflows/bad", {"steps": steps}, format="json"), 400, "invalid_workflow")
    assert path in error["details"]
    assert not Workflow.objects.exists()


def test_publish_checks_templates_exist_and_fit_the_channel(api, templates):
    steps = [{"id": "a", "type": "email", "template": "ping"}, {"id": "b", "type": "in_app", "template": "nope"}]
    api.put("/api/v1/workflows/w", {"steps": steps}, format="json")
    error = assert_error(api.post("/api/v1/workflows/w/publish"), 422, "invalid_templates")
    assert set(error["details"]) == {"ping", "nope"}
    assert not WorkflowVersion.objects.exists()


def test_publish_needs_steps_and_category_must_exist(api):
    api.put("/api/v1/workflows/empty", {"name": "Empty"}, format="json")
    assert_error(api.post("/api/v1/workflows/empty/publish"), 422, "empty_workflow")
    assert_error(api.put("/api/v1/workflows/empty", {"category": "nope"}, format="json"), 422, "unknown_category")


def test_delete_unused_workflow_and_deactivate_one_with_history(api, tenant, templates):
    api.put("/api/v1/workflows/gone", {"steps": STEPS[:1], "publish": True}, format="json")
    assert api.delete("/api/v1/workflows/gone").status_code == 204
    assert_error(api.get("/api/v1/workflows/gone"), 404, "workflow_not_found")

    api.put("/api/v1/workflows/kept", {"steps": STEPS[:1], "publish": True}, format="json")
    api.post("/api/v1/events/trigger", {"workflow": "kept", "to": ["u1"]}, format="json")
    assert api.delete("/api/v1/workflows/kept").status_code == 204
    assert api.get("/api/v1/workflows/kept").json()["active"] is False
    assert_error(
        api.post("/api/v1/events/trigger", {"workflow": "kept", "to": ["u1"]}, format="json"), 404, "workflow_not_found"
    )


def test_delete_refused_while_runs_are_in_progress(api, tenant, templates, django_capture_on_commit_callbacks):
    api.put("/api/v1/workflows/slow", {"steps": STEPS, "publish": True}, format="json")
    with django_capture_on_commit_callbacks(execute=True):
        api.post("/api/v1/events/trigger", {"workflow": "slow", "to": ["u1"]}, format="json")
    assert_error(api.delete("/api/v1/workflows/slow"), 409, "workflow_in_use")


def test_list_is_scoped_and_query_count_is_flat(api, other_tenant, templates, django_assert_num_queries):
    for i in range(5):
        api.put(f"/api/v1/workflows/w{i}", {"steps": STEPS[:1], "publish": True}, format="json")
    other_tenant.client.put("/api/v1/workflows/foreign", {"name": "Foreign"}, format="json")
    with django_assert_num_queries(2):
        response = api.get("/api/v1/workflows")
    assert sorted(w["key"] for w in response.json()["data"]) == [f"w{i}" for i in range(5)]


def test_other_environment_cannot_read_or_change(api, other_tenant, templates):
    api.put("/api/v1/workflows/mine", {"name": "Mine", "steps": STEPS[:1], "publish": True}, format="json")
    other = other_tenant.client
    assert_error(other.get("/api/v1/workflows/mine"), 404, "workflow_not_found")
    assert_error(other.post("/api/v1/workflows/mine/publish"), 404, "workflow_not_found")
    assert_error(other.get("/api/v1/workflows/mine/versions"), 404, "workflow_not_found")
    assert_error(other.delete("/api/v1/workflows/mine"), 404, "workflow_not_found")
    # The same key in another environment is a different workflow, created there.
    assert other.put("/api/v1/workflows/mine", {"name": "Theirs"}, format="json").status_code == 201
    assert api.get("/api/v1/workflows/mine").json()["name"] == "Mine"
    # …and it cannot point at this environment's templates.
    other.put("/api/v1/workflows/mine", {"steps": STEPS[:1]}, format="json")
    assert_error(other.post("/api/v1/workflows/mine/publish"), 422, "invalid_templates")


def test_bad_key_in_path(api):
    assert_error(api.put("/api/v1/workflows/has space", {"name": "x"}, format="json"), 400, "validation_error")
