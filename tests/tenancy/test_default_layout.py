"""Every new environment gets a neutral default email layout with its own branding, never another
environment's (issue 12: a new environment's emails carried the demo's footer)."""

from __future__ import annotations

from django.core.management import call_command

from apps.templates.models import EmailLayout
from apps.templates.rendering import render_version
from apps.templates.services import template_upsert, template_version_create
from apps.tenancy.models import Environment, Project
from apps.tenancy.services import environment_create

DEMO_FOOTER = "You get this because you follow posts on the Clarion demo."
API_KEYS_INLINE = {"api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0"}


def test_a_new_environment_has_a_neutral_default_layout_named_after_its_project(db):
    environment = environment_create(name="production", project_name="Acme <Shop> {{ x }}").environment

    layout = EmailLayout.objects.get(environment=environment)
    assert (layout.key, layout.name, layout.is_default, layout.show_unsubscribe) == (
        "default",
        "Default layout",
        True,
        True,
    )
    # The project name is text, not markup or template code.
    assert layout.header_en == "<strong>Acme &lt;Shop&gt; &#123;&#123; x &#125;&#125;</strong>"
    assert layout.footer_en == "You receive this email from Acme &lt;Shop&gt; &#123;&#123; x &#125;&#125;."
    assert layout.footer_fr.startswith("Vous recevez cet e-mail de la part de Acme")
    assert layout.footer_de.startswith("Sie erhalten diese E-Mail von Acme")


def test_an_email_of_a_new_environment_uses_its_layout_not_the_demos(db, tmp_path, settings):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=open(tmp_path / "out.txt", "w"))
    environment = environment_create(name="production", project_name="Acme").environment
    template, _ = template_upsert(environment=environment, key="welcome", channel="email")
    version = template_version_create(template=template, content={"en": {"subject": "Hi", "body": "Welcome"}})

    context = {
        "payload": {},
        "subscriber": {},
        "preferences_url": "https://x.test/p",
        "unsubscribe_url": "https://x.test/u",
    }
    rendered = render_version(version=version, locale="en", context=context)

    assert version.layout.key == "default"
    assert "You receive this email from Acme." in rendered.body
    assert "https://x.test/p" in rendered.body and "https://x.test/u" in rendered.body
    assert DEMO_FOOTER not in rendered.body
    # Only the demo environment has the demo layout.
    assert list(EmailLayout.objects.filter(key="demo").values_list("environment__project__name", flat=True)) == ["Demo"]


def test_an_environment_added_in_the_admin_gets_a_layout_with_its_branding(admin_client):
    project = Project.objects.create(name="Globex", slug="globex")
    response = admin_client.post(
        "/admin/tenancy/environment/add/",
        {
            "project": project.pk,
            "name": "staging",
            "slug": "globex-staging",
            "allowed_origins": "[]",
            **API_KEYS_INLINE,
            "brand_product_name": "Globex Mail",
            "brand_primary_color": "#ff6600",
            "brand_logo_url": "https://globex.test/l.png",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    environment = Environment.objects.get(slug="globex-staging")
    layout = EmailLayout.objects.get(environment=environment, is_default=True)
    assert layout.header_en == "<strong>Globex Mail</strong>"
    assert (layout.brand_color, layout.logo_url) == ("#ff6600", "https://globex.test/l.png")


def test_changing_an_environment_in_the_admin_leaves_its_layouts_alone(admin_client):
    environment = environment_create(name="production", project_name="Acme").environment
    EmailLayout.objects.filter(environment=environment).update(footer_en="Edited")

    response = admin_client.post(
        f"/admin/tenancy/environment/{environment.pk}/change/",
        {
            "project": environment.project_id,
            "name": "production",
            "slug": environment.slug,
            "allowed_origins": "[]",
            "branding": "{}",
            **API_KEYS_INLINE,
        },
    )

    assert response.status_code == 302
    assert list(EmailLayout.objects.filter(environment=environment).values_list("footer_en", flat=True)) == ["Edited"]
