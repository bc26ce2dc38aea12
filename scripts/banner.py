"""Print the `make run` banner from var/demo.json (written by `manage.py seed_demo`).

Standard library only, so it starts instantly and never touches the database.
Honours CLARION_VAR_DIR, HOST and PORT like the rest of `make run`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_path() -> Path:
    return Path(os.environ.get("CLARION_VAR_DIR") or ROOT / "var") / "demo.json"


def base_url() -> str:
    host = os.environ.get("HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    port = os.environ.get("PORT") or "8000"
    return f"http://{host}:{port}"


def trigger_curl(url: str, secret_key: str, subscriber_id: str) -> str:
    body = json.dumps(
        {
            "workflow": "comment-created",
            "to": [subscriber_id],
            "payload": {"post_title": "Hello", "comment": "First!", "author": "Grace"},
        }
    )
    return (
        f"curl -X POST {url}/api/v1/events/trigger \\\n"
        f'    -H "Authorization: Bearer {secret_key}" \\\n'
        f'    -H "Content-Type: application/json" \\\n'
        f"    -d {shlex.quote(body)}"
    )


def render(demo: dict[str, str], url: str) -> str:
    rule = "=" * 78
    admin = f"{url}/admin/"
    if demo.get("admin_username") and demo.get("admin_password"):
        admin += f"   (login: {demo['admin_username']} / {demo['admin_password']})"
    lines = [
        "",
        rule,
        "  Clarion is running (web + worker). Ctrl-C stops both.",
        rule,
        f"  App              {url}/",
        f"  Admin            {admin}",
        f"  API docs         {url}/api/docs/",
        f"  Demo inbox       {url}/demo/inbox/",
        "",
        f"  Environment      {demo.get('environment_slug', '?')}",
        f"  Secret key       {demo.get('secret_key', '?')}   (server API)",
        f"  Publishable key  {demo.get('publishable_key', '?')}   (inbox widget)",
        f"  Demo subscriber  {demo.get('subscriber_id', '?')}",
        "",
        "  Open the demo inbox, then trigger workflow 'comment-created':",
        "",
        "  "
        + trigger_curl(url, demo.get("secret_key", "sk_..."), demo.get("subscriber_id", "?")).replace("\n", "\n  "),
        rule,
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    path = demo_path()
    try:
        demo = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"banner: {path} not found; run `python manage.py seed_demo` first", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"banner: {path} is not valid JSON ({exc})", file=sys.stderr)
        return 1
    print(render(demo, base_url()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
