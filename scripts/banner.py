"""Print the `make run` banner from var/demo.json (written by `manage.py seed_demo`).

Standard library only, so it starts instantly and never touches the database.
Honours CLARION_VAR_DIR, HOST, PORT and CLARION_PUBLIC_URL like the rest of `make run`.

`banner.py --public-url` prints only the public URL `make run` gives the web and worker processes:
CLARION_PUBLIC_URL when it is set (in the environment or in .env), else http://HOST:PORT, so the
links in emails (preference center, List-Unsubscribe) follow the port.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]")
# The environment variables the README's examples use (not SECRET_KEY: that is Django's own key).
API_KEY_VARIABLE = "CLARION_API_KEY"
URL_VARIABLE = "CLARION_URL"


def var_dir() -> Path:
    return Path(os.environ.get("CLARION_VAR_DIR") or ROOT / "var").resolve()


def demo_path() -> Path:
    return var_dir() / "demo.json"


def base_url() -> str:
    """Where this machine reaches the web process."""
    host = os.environ.get("HOST") or "127.0.0.1"
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    port = os.environ.get("PORT") or "8000"
    return f"http://{host}:{port}"


def dotenv_value(name: str, path: Path | None = None) -> str:
    """``name`` from the project's .env file (the settings read it too), or ""."""
    path = path or ROOT / ".env"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    value = ""
    for line in lines:
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, rest = line.partition("=")
        if sep and key.strip() == name:
            value = rest.strip().strip("'\"")
    return value


def public_url() -> tuple[str, str]:
    """(the public URL, where it came from)."""
    given = os.environ.get("CLARION_PUBLIC_URL", "")
    if given:
        return given.rstrip("/"), "CLARION_PUBLIC_URL"
    given = dotenv_value("CLARION_PUBLIC_URL")
    if given:
        return given.rstrip("/"), "CLARION_PUBLIC_URL in .env"
    return base_url(), "from HOST and PORT; set CLARION_PUBLIC_URL to change"


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


def render(demo: dict[str, str], url: str, public: tuple[str, str], folder: Path) -> str:
    rule = "=" * 78
    admin = f"{url}/admin/"
    if demo.get("admin_username") and demo.get("admin_password"):
        admin += f"   (login: {demo['admin_username']} / {demo['admin_password']})"
    elif demo.get("admin_username"):
        admin += f"   (login: {demo['admin_username']}; `manage.py changepassword` sets a password)"
    secret_key = demo.get("secret_key", "sk_...")
    exports = f"export {URL_VARIABLE}={shlex.quote(url)} {API_KEY_VARIABLE}={shlex.quote(secret_key)}"
    lines = [
        "",
        rule,
        "  Clarion is running (web + worker). Ctrl-C stops both.",
        rule,
        f"  App              {url}/",
        f"  Admin            {admin}",
        f"  API docs         {url}/api/docs/",
        f"  Demo inbox       {url}/demo/inbox/",
        f"  Public URL       {public[0]}   (links in emails; {public[1]})",
        "",
        f"  Environment      {demo.get('environment_slug', '?')}",
        f"  Secret key       {secret_key}   (server API)",
        f"  Publishable key  {demo.get('publishable_key', '?')}   (inbox widget)",
        f"  Inbox secret     {demo.get('inbox_hmac_secret', '?')}   (HMAC of subscriber ids, docs/inbox.md)",
        f"  Demo subscriber  {demo.get('subscriber_id', '?')}",
        f"  Demo keys        {folder / 'demo.json'}",
        f"  Data             {folder}   (database, mail/; CLARION_VAR_DIR moves it)",
        "",
        "  Open the demo inbox, then trigger workflow 'comment-created':",
        "",
        "  " + trigger_curl(url, secret_key, demo.get("subscriber_id", "?")).replace("\n", "\n  "),
        "",
        "  The README's examples read these two variables:",
        "",
        f"  {exports}",
        rule,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--public-url"]:
        print(public_url()[0])
        return 0
    path = demo_path()
    try:
        demo = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"banner: {path} not found; run `python manage.py seed_demo` first", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"banner: {path} is not valid JSON ({exc})", file=sys.stderr)
        return 1
    print(render(demo, base_url(), public_url(), var_dir()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
