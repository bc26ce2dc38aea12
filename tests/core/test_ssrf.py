"""No outbound request reaches an internal host (SSRF) unless the operator allows its network.

Every request here goes to a fake server on loopback (or is refused before connecting). Names
resolve through a fake resolver (DNS is the outside world); addresses other than loopback are
only ever checked, never connected to.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.core.net import DestinationRefused, checked_addresses, destination_check, refusal_reason
from apps.delivery.models import DeliveryAttempt, Message
from apps.delivery.providers.base import ErrorKind, ProviderError, http_post
from apps.delivery.tasks import deliver_messages
from apps.subscribers.models import Device
from tests.assertions import assert_error
from tests.delivery.conftest import FakeServer, Reply
from tests.factories import IntegrationFactory, SubscriberFactory

LOOPBACK = "127.0.0.0/8"


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """Fake provider servers on 127.0.0.1 (tests/delivery's), closed after the test."""
    servers: list[FakeServer] = []

    def make(replies: list[Reply] | None = None) -> FakeServer:
        servers.append(FakeServer(replies))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def no_private_networks(settings: Any) -> None:
    """Production's default: no internal network allowed."""
    settings.CLARION_ALLOWED_PRIVATE_NETWORKS = []


class FakeDns:
    """``socket.getaddrinfo`` for a few names: each lookup takes the next answer (the last repeats).

    An answer is a list of addresses, or ``None`` for "no such name". Other ``.test`` names do not
    resolve; everything else (address literals) goes to the real resolver, which needs no network.
    """

    def __init__(self, answers: dict[str, list[list[str] | None]]) -> None:
        self.answers = {name: list(seq) for name, seq in answers.items()}
        self.lookups: Counter[str] = Counter()
        self._real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in self.answers:
            self.lookups[name] += 1
            seq = self.answers[name]
            answer = seq.pop(0) if len(seq) > 1 else seq[0]
        elif name.endswith(".test"):
            answer = None
        else:
            return self._real(host, port, *args, **kwargs)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        port_number = int(port or 0)
        infos = []
        for address in answer:
            if ipaddress.ip_address(address).version == 6:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port_number, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port_number)))
        return infos


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[list[str] | None]]], FakeDns]:
    def install(answers: dict[str, list[list[str] | None]]) -> FakeDns:
        dns = FakeDns(answers)
        monkeypatch.setattr(socket, "getaddrinfo", dns)
        return dns

    return install


# --- which addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
    ],
)
def test_internal_addresses_are_refused(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_allowed_networks_open_exactly_those_networks(settings: Any) -> None:
    settings.CLARION_ALLOWED_PRIVATE_NETWORKS = ["10.1.0.0/16", "::1/128"]
    assert checked_addresses("10.1.2.3", 443) == [ipaddress.ip_address("10.1.2.3")]
    assert checked_addresses("::1", 443) == [ipaddress.ip_address("::1")]
    for refused in ("10.2.0.1", "127.0.0.1", "169.254.169.254"):
        with pytest.raises(DestinationRefused):
            checked_addresses(refused, 443)


# --- at send time -------------------------------------------------------------------------------------


def test_http_post_refuses_loopback_and_sends_nothing(no_private_networks: None, fake_server: Any) -> None:
    server = fake_server()
    with pytest.raises(ProviderError) as caught:
        http_post(f"{server.url}/hook", what="Webhook endpoint", timeout=5, json_body={"x": 1})
    assert caught.value.kind == ErrorKind.CONFIGURATION
    assert not caught.value.retryable and not caught.value.in_doubt
    assert "loopback" in str(caught.value) and "CLARION_ALLOWED_PRIVATE_NETWORKS" in str(caught.value)
    assert server.requests == []


def test_a_name_resolving_to_loopback_is_refused(no_private_networks: None, fake_server: Any, fake_dns: Any) -> None:
    server = fake_server()
    port = server.url.rsplit(":", 1)[1]
    dns = fake_dns({"hooks.example.test": [["127.0.0.1"]]})
    with pytest.raises(ProviderError) as caught:
        http_post(f"http://hooks.example.test:{port}/", what="SMS gateway", timeout=5, json_body={})
    assert caught.value.kind == ErrorKind.CONFIGURATION
    assert "hooks.example.test (resolves to 127.0.0.1) is a loopback address" in str(caught.value)
    assert dns.lookups["hooks.example.test"] == 1
    assert server.requests == []


def test_every_address_is_checked_not_only_the_first(settings: Any, fake_server: Any, fake_dns: Any) -> None:
    settings.CLARION_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    server = fake_server()
    port = server.url.rsplit(":", 1)[1]
    # Both loopback (nothing here may leave the machine), only the first allowed.
    fake_dns({"mixed.example.test": [["127.0.0.1", "127.0.0.3"]]})
    with pytest.raises(ProviderError, match=r"resolves to 127\.0\.0\.3\) is a loopback address"):
        http_post(f"http://mixed.example.test:{port}/", what="Webhook endpoint", timeout=5, json_body={})
    assert server.requests == []


def test_the_connection_goes_to_the_checked_address_dns_rebinding(
    settings: Any, fake_server: Any, fake_dns: Any
) -> None:
    """The check's lookup is the connection's: a second lookup answering another address (a
    rebinding DNS server) is never made. Only 127.0.0.1 is allowed; the fake server listens there
    and nothing listens on 127.0.0.2, so a client that resolved again would fail to connect."""
    settings.CLARION_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    server = fake_server([Reply(body={"id": "ok"})])
    port = server.url.rsplit(":", 1)[1]
    dns = fake_dns({"rebind.example.test": [["127.0.0.1"], ["127.0.0.2"]]})

    response = http_post(f"http://rebind.example.test:{port}/hook", what="Webhook endpoint", timeout=5, json_body={})

    assert response.status_code == 200
    assert dns.lookups["rebind.example.test"] == 1
    assert [r.path for r in server.requests] == ["/hook"]
    assert server.requests[0].headers["Host"] == f"rebind.example.test:{port}"  # the name, not the address


def test_a_name_that_changed_to_an_internal_address_since_it_was_saved_is_refused(
    no_private_networks: None, tenant: Any, fake_server: Any, fake_dns: Any
) -> None:
    server = fake_server()
    port = server.url.rsplit(":", 1)[1]
    # Public when the integration is saved; loopback when the worker sends. The public address is
    # only ever checked: the test stops before sending unless the save-time check took that answer.
    dns = fake_dns({"moving.example.test": [["93.184.216.34"], ["127.0.0.1"]]})
    response = tenant.client.post(
        "/api/v1/integrations",
        {
            "channel": "webhook",
            "provider": "webhook",
            "credentials": {"url": f"http://moving.example.test:{port}/", "secret": "s"},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert dns.lookups["moving.example.test"] == 1
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    message = Message.objects.create(
        environment=tenant.environment, step_id="s", channel="webhook", subscriber=subscriber, recipient="u1"
    )

    deliver_messages([message.pk])

    message.refresh_from_db()
    attempt = DeliveryAttempt.objects.get(message=message)
    assert message.status == "failed"
    assert (attempt.error_kind, attempt.retryable) == ("configuration", False)
    assert "moving.example.test (resolves to 127.0.0.1) is a loopback address" in attempt.error
    assert server.requests == []


def _loopback_sends(env: Any, url: str) -> list[tuple[Any, Message]]:
    """One message per provider that posts to a customer URL, each aimed at ``url``."""
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    cases = [
        ("webhook", "webhook", {"url": f"{url}/webhook", "secret": "s"}),
        ("sms", "http", {"url": f"{url}/sms"}),
        ("chat", "slack", {"webhook_url": f"{url}/slack"}),
        ("chat", "discord", {"webhook_url": f"{url}/discord"}),
        ("chat", "msteams", {"webhook_url": f"{url}/teams"}),
    ]
    sends = []
    for channel, provider, credentials in cases:
        integration = IntegrationFactory(environment=env, channel=channel, provider=provider, credentials=credentials)
        message = Message.objects.create(
            environment=env,
            step_id=provider,
            channel=channel,
            subscriber=subscriber,
            recipient=subscriber.phone if channel == "sms" else "u1",
            body="hello",
        )
        sends.append((integration, message))
    return sends


def test_every_provider_posting_to_a_customer_url_is_guarded(
    no_private_networks: None, tenant: Any, fake_server: Any
) -> None:
    server = fake_server()
    sends = _loopback_sends(tenant.environment, server.url)
    for integration, message in sends:
        # One integration per message: the others are switched off so nothing fails over.
        tenant.environment.integrations.exclude(pk=integration.pk).update(active=False)
        tenant.environment.integrations.filter(pk=integration.pk).update(active=True)
        deliver_messages([message.pk])
        message.refresh_from_db()
        attempts = list(DeliveryAttempt.objects.filter(message=message))
        assert message.status == "failed", integration.provider
        assert [(a.error_kind, a.retryable) for a in attempts] == [("configuration", False)], integration.provider
    assert server.requests == []


def test_a_subscribers_own_chat_webhook_is_guarded(no_private_networks: None, tenant: Any, fake_server: Any) -> None:
    env = tenant.environment
    server = fake_server()
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    Device.objects.create(environment=env, subscriber=subscriber, provider="slack", token=f"{server.url}/mine")
    IntegrationFactory(environment=env, channel="chat", provider="slack", credentials={})
    message = Message.objects.create(environment=env, step_id="s", channel="chat", subscriber=subscriber, body="hi")

    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == "failed"
    assert DeliveryAttempt.objects.get(message=message).error_kind == "configuration"
    assert server.requests == [] and Device.objects.count() == 1  # refused, not "gone"


def test_web_push_endpoint_is_guarded(no_private_networks: None, tenant: Any, fake_server: Any) -> None:
    from tests.delivery.test_channels import PushSubscriber, vapid_private_key

    env = tenant.environment
    server = fake_server([Reply(status=201, body={})])
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    Device.objects.create(
        environment=env, subscriber=subscriber, provider="webpush", token=f"{server.url}/p", keys=PushSubscriber().keys
    )
    IntegrationFactory(
        environment=env,
        channel="push",
        provider="webpush",
        credentials={"vapid_private_key": vapid_private_key(), "vapid_subject": "mailto:ops@acme.test"},
    )
    message = Message.objects.create(environment=env, step_id="s", channel="push", subscriber=subscriber, body="hi")

    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == "failed"
    assert DeliveryAttempt.objects.get(message=message).error_kind == "configuration"
    assert server.requests == []


def test_an_email_service_api_url_override_is_guarded(no_private_networks: None, tenant: Any, fake_server: Any) -> None:
    env = tenant.environment
    server = fake_server()
    IntegrationFactory(
        environment=env, channel="email", provider="postmark", credentials={"server_token": "t", "api_url": server.url}
    )
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", email="u1@example.com")
    message = Message.objects.create(
        environment=env, step_id="s", channel="email", subscriber=subscriber, recipient="u1@example.com", body="hi"
    )

    deliver_messages([message.pk])

    message.refresh_from_db()
    attempt = DeliveryAttempt.objects.get(message=message)
    assert message.status == "failed"
    assert attempt.error_kind == "configuration" and "loopback" in attempt.error
    assert server.requests == []


def test_the_allowed_networks_let_the_same_sends_through(settings: Any, tenant: Any, fake_server: Any) -> None:
    """The counter-check: with loopback allowed (as the test suite runs), each provider reaches it."""
    settings.CLARION_ALLOWED_PRIVATE_NETWORKS = [LOOPBACK]
    server = fake_server([Reply(body={"id": "ok"})])
    sends = _loopback_sends(tenant.environment, server.url)
    for integration, message in sends:
        tenant.environment.integrations.exclude(pk=integration.pk).update(active=False)
        tenant.environment.integrations.filter(pk=integration.pk).update(active=True)
        deliver_messages([message.pk])
        message.refresh_from_db()
        assert message.status == "sent", (integration.provider, message.error)
    assert [r.path for r in server.requests] == ["/webhook", "/sms", "/slack", "/discord", "/teams"]


class _Redirector:
    """A loopback server that answers every POST with a 307 to ``target``."""

    def __init__(self, target: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(307)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def redirector() -> Iterator[Callable[[str], _Redirector]]:
    made: list[_Redirector] = []

    def make(target: str) -> _Redirector:
        made.append(_Redirector(target))
        return made[-1]

    yield make
    for item in made:
        item.server.shutdown()
        item.server.server_close()


def test_a_redirect_to_an_internal_address_is_refused(
    settings: Any, fake_server: Any, fake_dns: Any, redirector: Any
) -> None:
    """Allowed: the name that resolves to 127.0.0.1. Not allowed: 127.0.0.2, where it redirects."""
    settings.CLARION_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    internal = fake_server()
    internal_port = internal.url.rsplit(":", 1)[1]
    public = redirector(f"http://127.0.0.2:{internal_port}/admin")
    fake_dns({"public.example.test": [["127.0.0.1"]]})
    with pytest.raises(ProviderError, match=r"127\.0\.0\.2 is a loopback address") as caught:
        http_post(
            f"http://public.example.test:{public.url.rsplit(':', 1)[1]}/", what="Webhook", timeout=5, json_body={}
        )
    assert caught.value.kind == ErrorKind.CONFIGURATION
    assert internal.requests == []


# --- at save time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "provider", "key", "extra"),
    [
        ("webhook", "webhook", "url", {"secret": "s"}),
        ("sms", "http", "url", {}),
        ("chat", "slack", "webhook_url", {}),
        ("chat", "discord", "webhook_url", {}),
        ("chat", "msteams", "webhook_url", {}),
        ("email", "mailgun", "api_url", {"api_key": "k"}),
    ],
)
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "https://10.1.2.3/x",
        "http://localhost:9000/hook",  # a name that resolves only to loopback (/etc/hosts)
        "https://only-internal.example.test/x",
    ],
)
def test_the_api_refuses_an_internal_destination_with_a_422_naming_the_field(
    no_private_networks: None, api: Any, fake_dns: Any, channel: str, provider: str, key: str, extra: dict, url: str
) -> None:
    fake_dns({"only-internal.example.test": [["10.0.0.5", "fd12::5"]], "localhost": [["127.0.0.1", "::1"]]})
    payload = {"channel": channel, "provider": provider, "credentials": {key: url, **extra}}
    error = assert_error(api.post("/api/v1/integrations", payload, format="json"), 422, "internal_destination")
    assert list(error["details"]["credentials"]) == [key]
    assert f"credentials.{key}" in error["message"]
    assert not api.get("/api/v1/integrations").json()["data"]


def test_the_api_refuses_an_update_to_an_internal_destination(no_private_networks: None, api: Any) -> None:
    created = api.post(
        "/api/v1/integrations",
        {"channel": "sms", "provider": "http", "credentials": {"url": "https://93.184.216.34/sms"}},
        format="json",
    )
    assert created.status_code == 201, created.content
    path = f"/api/v1/integrations/{created.json()['id']}"
    error = assert_error(
        api.patch(path, {"credentials": {"url": "http://127.0.0.1/sms"}}, format="json"), 422, "internal_destination"
    )
    assert "url" in error["details"]["credentials"]
    assert api.patch(path, {"priority": 3}, format="json").status_code == 200


@pytest.mark.parametrize(
    "answers",
    [
        [["93.184.216.34"]],  # public
        [["93.184.216.34", "10.0.0.1"]],  # not only internal: the send checks each address again
        [None],  # does not resolve yet
    ],
    ids=["public", "mixed", "unresolved"],
)
def test_the_api_accepts_a_name_that_is_not_only_internal(
    no_private_networks: None, api: Any, fake_dns: Any, answers: list[list[str] | None]
) -> None:
    fake_dns({"hooks.example.test": answers})
    payload = {
        "channel": "webhook",
        "provider": "webhook",
        "credentials": {"url": "https://hooks.example.test/in", "secret": "s"},
    }
    assert api.post("/api/v1/integrations", payload, format="json").status_code == 201


def test_the_api_accepts_an_allowed_internal_network(settings: Any, api: Any) -> None:
    settings.CLARION_ALLOWED_PRIVATE_NETWORKS = ["10.20.0.0/16"]
    payload = {"channel": "sms", "provider": "http", "credentials": {"url": "http://10.20.1.1:8080/sms"}}
    assert api.post("/api/v1/integrations", payload, format="json").status_code == 201


def test_the_admin_refuses_an_internal_destination(no_private_networks: None, admin_client: Any, tenant: Any) -> None:
    integration = IntegrationFactory(
        environment=tenant.environment,
        channel="webhook",
        provider="webhook",
        credentials={"url": "https://93.184.216.34/hook", "secret": "s"},
    )
    url = f"/admin/delivery/integration/{integration.pk}/change/"
    data = {
        "environment": integration.environment_id,
        "channel": "webhook",
        "provider": "webhook",
        "name": "",
        "credentials": json.dumps({"url": "http://169.254.169.254/latest", "secret": "s"}),
        "settings": "{}",
        "priority": 0,
        "active": "on",
        "retries": 2,
        "rate_limit": "",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert "url: 169.254.169.254 is a cloud metadata address" in response.content.decode()
    integration.refresh_from_db()
    assert integration.credentials["url"] == "https://93.184.216.34/hook"


def test_destination_check_waits_for_dns_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that never answers does not hold the request: the name is accepted (counted
    lookups, no clock): the send checks it again."""
    started = threading.Event()
    release = threading.Event()

    def hanging(*args: Any, **kwargs: Any) -> list[Any]:
        started.set()
        release.wait(5)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        destination_check("https://slow.example.test/x", resolve_timeout=0.05)
    finally:
        release.set()
    assert started.is_set()


def test_settings_refuse_a_bad_network(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from django.conf import settings as django_settings

    env = {**os.environ, "CLARION_VAR_DIR": str(tmp_path), "CLARION_ALLOWED_PRIVATE_NETWORKS": "10.0.0.0/8,not-a-net"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert ImproperlyConfigured.__name__ in result.stderr and "'not-a-net'" in result.stderr
