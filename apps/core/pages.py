"""The pages a person opens first: ``/`` (what runs here and where to go), the project's guides
under ``/docs/`` (rendered from ``docs/*.md``) and ``/favicon.ico``."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import markdown
from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import path, re_path
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

DOCS_DIR = Path(settings.BASE_DIR) / "docs"
GUIDE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,60}$")
IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}\.png$")
# Links between guides (`workflows.md#digest`, `docs/inbox.md`) and images (`img/x.png`).
_GUIDE_LINK = re.compile(r'href="(?:\./|docs/)?([a-z0-9-]+)\.md(#[^"]*)?"')
_IMAGE_SRC = re.compile(r'src="(?:\./|docs/)?img/([a-z0-9-]+\.png)"')


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "site/home.html",
        {"demo_page": settings.CLARION_DEMO_PAGE, "guides": guides(), "public_url": settings.PUBLIC_URL},
    )


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    return HttpResponsePermanentRedirect(static("clarion/favicon.svg"))


def guides() -> list[dict[str, str]]:
    """The guides in docs/ (name, title), in the README's order of topics."""
    if not DOCS_DIR.is_dir():
        return []
    found = []
    for source in sorted(DOCS_DIR.glob("*.md")):
        if GUIDE_NAME.match(source.stem):
            found.append({"name": source.stem, "title": _guide(source.stem, source.stat().st_mtime_ns)[0]})
    return found


@lru_cache(maxsize=64)
def _guide(name: str, mtime_ns: int) -> tuple[str, SafeString]:
    """(title, HTML) of docs/<name>.md; ``mtime_ns`` keys the cache so an edited guide re-renders."""
    text = (DOCS_DIR / f"{name}.md").read_text(encoding="utf-8")
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), name)
    html = markdown.markdown(text, extensions=["extra", "sane_lists", "toc"], output_format="html")
    html = _GUIDE_LINK.sub(lambda m: f'href="/docs/{m.group(1)}/{m.group(2) or ""}"', html)
    html = _IMAGE_SRC.sub(lambda m: f'src="/docs/img/{m.group(1)}"', html)
    # The guides are the project's own files, written by its maintainers: trusted markup.
    return title, mark_safe(html)


@require_GET
def docs_index(request: HttpRequest) -> HttpResponse:
    found = guides()
    if not found:
        raise Http404("The guides (docs/) are not installed here.")
    return render(request, "site/docs_index.html", {"guides": found})


@require_GET
def docs_page(request: HttpRequest, name: str) -> HttpResponse:
    source = DOCS_DIR / f"{name}.md"
    if not GUIDE_NAME.match(name) or not source.is_file():
        raise Http404(f"No guide named {name!r}.")
    title, html = _guide(name, source.stat().st_mtime_ns)
    return render(request, "site/docs_page.html", {"title": title, "html": html, "guides": guides(), "name": name})


@require_GET
def docs_image(request: HttpRequest, name: str) -> FileResponse:
    source = DOCS_DIR / "img" / name
    if not IMAGE_NAME.match(name) or not source.is_file():
        raise Http404(f"No image named {name!r}.")
    return FileResponse(source.open("rb"), content_type="image/png")


urlpatterns = [
    path("", home, name="home"),
    path("favicon.ico", favicon, name="favicon"),
    path("docs/", docs_index, name="docs"),
    re_path(r"^docs/img/(?P<name>[^/]+)$", docs_image, name="docs-image"),
    re_path(r"^docs/(?P<name>[^/]+)/$", docs_page, name="docs-page"),
]
