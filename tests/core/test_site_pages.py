"""The first URL the banner prints works: ``/`` is a small landing page linking the admin, the demo
inbox, the API docs and the guides (rendered from docs/*.md); ``/favicon.ico`` answers; the admin's
"View site" leads there (issue 12)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from tests.core.test_csp import assert_safe_page


def hrefs(response: Any) -> set[str]:
    return set(re.findall(r'href="([^"]+)"', response.content.decode()))


@pytest.mark.parametrize("demo_page", [True, False])
def test_landing_page_links_everything_a_newcomer_needs(settings: Any, demo_page: bool) -> None:
    settings.CLARION_DEMO_PAGE = demo_page
    settings.PUBLIC_URL = "http://127.0.0.1:8100"

    response = Client().get("/")

    assert_safe_page(response)
    links = hrefs(response)
    assert {"/admin/", "/api/docs/", "/api/schema/", "/docs/", "/docs/inbox/", "/docs/workflows/"} <= links
    assert ("/demo/inbox/" in links) is demo_page  # only where the demo page is on
    assert "/static/clarion/favicon.svg" in links
    assert "http://127.0.0.1:8100" in response.content.decode()


def test_landing_page_is_get_only() -> None:
    assert Client().post("/").status_code == 405


def test_favicon_answers() -> None:
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == "/static/clarion/favicon.svg"
    icon = Client().get("/static/clarion/favicon.svg")
    assert icon.status_code == 200 and icon["Content-Type"].startswith("image/svg")


def test_the_admins_view_site_link_goes_to_the_landing_page(admin_client: Any) -> None:
    html = admin_client.get("/admin/").content.decode()
    assert re.search(r'<a href="/"[^>]*>\s*View site\s*</a>', html), "no View site link to /"


def test_guides_are_listed_and_rendered_with_links_between_them() -> None:
    index = Client().get("/docs/")
    assert_safe_page(index)
    assert "/docs/deployment/" in hrefs(index)

    page = Client().get("/docs/workflows/")
    assert_safe_page(page)
    html = page.content.decode()
    assert "<h1" in html and "Workflows" in html
    assert 'href="/docs/' in html and ".md" not in "".join(hrefs(page))  # links point at pages, not files
    assert 'aria-current="page"' in html


def test_guide_images_are_served() -> None:
    html = Client().get("/docs/inbox/").content.decode()
    image = re.search(r'src="(/docs/img/[a-z0-9-]+\.png)"', html)
    assert image, "the inbox guide shows its screenshots"
    response = Client().get(image.group(1))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"


@pytest.mark.parametrize(
    "path",
    ["/docs/nope/", "/docs/..%2Fpyproject/", "/docs/README/", "/docs/img/nope.png", "/docs/img/..%2Fapi.md"],
)
def test_unknown_guides_and_files_are_404(path: str) -> None:
    assert Client().get(path).status_code == 404


def test_the_console_home_is_titled_as_the_overview(admin_client: Any) -> None:
    html = admin_client.get("/admin/").content.decode()
    assert "Overview" in html and "Site administration" not in html
