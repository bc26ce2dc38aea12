"""The hosted pages' catalogues: every string translated, and the compiled .mo matches the .po."""

from __future__ import annotations

import gettext
import re
from pathlib import Path

import pytest
from django.conf import settings

LOCALE = Path(settings.BASE_DIR) / "locale"
OUR_SOURCES = ("apps/preferences/", "templates/preferences/")


def entries(po: Path) -> list[tuple[list[str], str, str]]:
    """(source references, msgid, msgstr) for every entry but the header (msgcat --no-wrap style)."""
    found = []
    for block in po.read_text(encoding="utf-8").split("\n\n"):
        refs = [ref for line in block.splitlines() if line.startswith("#: ") for ref in line[3:].split()]
        msgid = re.search(r'^msgid "(.*)"$', block, re.M)
        msgstr = re.search(r'^msgstr "(.*)"$', block, re.M)
        if msgid and msgstr and msgid.group(1):
            unescape = lambda s: s.replace('\\"', '"').replace("\\\\", "\\")  # noqa: E731
            found.append((refs, unescape(msgid.group(1)), unescape(msgstr.group(1))))
    return found


@pytest.mark.parametrize("language", [code for code, _ in settings.LANGUAGES if code != "en"])
def test_catalogue_is_complete_and_compiled(language: str) -> None:
    po = LOCALE / language / "LC_MESSAGES" / "django.po"
    mo = po.with_suffix(".mo")
    ours = [(msgid, msgstr) for refs, msgid, msgstr in entries(po) if any(r.startswith(OUR_SOURCES) for r in refs)]
    assert len(ours) > 40
    assert [msgid for msgid, msgstr in ours if not msgstr] == []
    for msgid, msgstr in ours:  # placeholders survive translation
        assert sorted(re.findall(r"%\(\w+\)s", msgid)) == sorted(re.findall(r"%\(\w+\)s", msgstr)), msgid
    compiled = gettext.GNUTranslations(mo.open("rb"))
    stale = [msgid for msgid, msgstr in ours if compiled.gettext(msgid) != msgstr]
    assert stale == [], "run `manage.py compilemessages`: the .mo is older than the .po"
