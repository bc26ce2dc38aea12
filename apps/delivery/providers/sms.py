"""SMS providers: Twilio (official library) and a generic HTTP provider for any SMS gateway with a JSON API."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.urls import reverse
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from apps.delivery.models import Integration, Message
from apps.delivery.providers.base import (
    ErrorKind,
    Provider,
    ProviderError,
    SendResult,
    error_from_requests_exception,
    http_post,
    idempotency_key,
    kind_for_status,
    register,
)

# Twilio error codes (https://www.twilio.com/docs/api/errors) that mean the number itself is bad:
# the address is marked inactive so it is not retried forever.
TWILIO_INVALID_NUMBER_CODES = frozenset(
    {
        21211,  # invalid 'To' phone number
        21214,  # 'To' number cannot be reached
        21217,  # phone number does not appear to be valid
        21401,  # invalid phone number
        21407,  # this phone number type does not support SMS
        21614,  # 'To' number is not a valid mobile number
        30003,  # unreachable destination handset
        30005,  # unknown destination handset
        30006,  # landline or unreachable carrier
    }
)
TWILIO_OPTED_OUT_CODES = frozenset({21610})  # the recipient replied STOP
TWILIO_AUTH_CODES = frozenset({20003, 20005, 20008})
TWILIO_RATE_CODES = frozenset({20429, 14107, 30022})


TWILIO_API_URL = "https://api.twilio.com"


@functools.lru_cache(maxsize=1024)
def _twilio_status_path(webhook_key: str) -> str:
    return reverse("delivery-webhook-twilio-status", kwargs={"key": webhook_key})


def twilio_status_callback_url(integration: Integration, message: Message | None = None) -> str:
    """The status callback URL; per message it carries ``clarion_message_id``, so a callback is
    matched even when the send's answer (the Message SID) was never recorded (in doubt)."""
    path = _twilio_status_path(integration.webhook_key)
    query = f"?{urlencode({'clarion_message_id': message.pk})}" if message is not None else ""
    return f"{settings.PUBLIC_URL}{path}{query}"


def twilio_error(exc: TwilioRestException) -> ProviderError:
    code = exc.code
    if code in TWILIO_INVALID_NUMBER_CODES:
        kind = ErrorKind.INVALID_ADDRESS
    elif code in TWILIO_OPTED_OUT_CODES:
        kind = ErrorKind.REJECTED
    elif code in TWILIO_AUTH_CODES:
        kind = ErrorKind.AUTH
    elif code in TWILIO_RATE_CODES:
        kind = ErrorKind.RATE_LIMITED
    else:
        kind = kind_for_status(exc.status)
    return ProviderError(
        f"Twilio {exc.status} error {code}: {exc.msg}",
        kind=kind,
        status_code=exc.status,
        response={"status_code": exc.status, "code": code, "message": exc.msg},
    )


_twilio_clients: ContextVar[dict[int, Client] | None] = ContextVar("clarion_twilio_clients", default=None)


@register
class TwilioSms(Provider):
    """Credentials: ``account_sid`` and ``auth_token`` (or ``api_key_sid`` + ``api_key_secret``).
    Settings: ``from_number`` (E.164) or ``messaging_service_sid``; optional ``timeout``."""

    channel = "sms"
    name = "twilio"
    required_credentials = ("account_sid",)
    # Twilio's Messages API takes no idempotency key: a resend is a second SMS.
    metadata_field = "clarion_message_id in the StatusCallback URL"

    @contextmanager
    def connection(self, integration: Integration | None, messages: Sequence[Message] = ()) -> Iterator[None]:
        """One Twilio client (and so one HTTP session, kept alive) for the whole batch."""
        clients = dict(_twilio_clients.get() or {})
        if integration is not None:
            clients[integration.pk] = self._new_client(integration)
        token = _twilio_clients.set(clients)
        try:
            yield
        finally:
            _twilio_clients.reset(token)
            for client in clients.values():
                session = getattr(client.http_client, "session", None)
                if session is not None:
                    session.close()

    def client(self, integration: Integration) -> Client:
        reused = (_twilio_clients.get() or {}).get(integration.pk)
        return reused if reused is not None else self._new_client(integration)

    def _new_client(self, integration: Integration) -> Client:
        creds = integration.credentials
        http_client = TwilioHttpClient(timeout=self.timeout(integration))
        session = http_client.session
        if session is not None and session.trust_env:
            # requests reads the proxy and CA bundle variables again on every request (a scan of the
            # whole environment each time): read them once, when the client (one per batch) is made.
            session.proxies.update(requests.utils.get_environ_proxies(TWILIO_API_URL))
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                session.verify = bundle
            session.trust_env = False
        if creds.get("api_key_sid"):
            return Client(
                creds["api_key_sid"], creds.get("api_key_secret"), creds["account_sid"], http_client=http_client
            )
        return Client(creds["account_sid"], creds.get("auth_token"), http_client=http_client)

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        if integration is None:
            raise ProviderError("twilio needs an integration", kind=ErrorKind.CONFIGURATION)
        params: dict[str, Any] = {
            "to": message.recipient,
            "body": message.body,
            "status_callback": twilio_status_callback_url(integration, message),
        }
        if integration.settings.get("messaging_service_sid"):
            params["messaging_service_sid"] = integration.settings["messaging_service_sid"]
        elif integration.settings.get("from_number"):
            params["from_"] = integration.settings["from_number"]
        else:
            raise ProviderError("set from_number or messaging_service_sid", kind=ErrorKind.CONFIGURATION)
        try:
            created = self.client(integration).messages.create(**params)
        except TwilioRestException as exc:
            raise twilio_error(exc) from exc
        except requests.RequestException as exc:
            raise error_from_requests_exception(exc, what="Twilio") from exc
        return SendResult(
            provider_message_id=created.sid or "",
            response={"status": created.status, "sid": created.sid},
            status_code=201,
        )


@register
class HttpSms(Provider):
    """Any SMS gateway that takes a JSON POST.

    Credentials: ``url``; optional ``auth_token`` (sent as ``Authorization: Bearer``), or
    ``username`` + ``password`` (basic auth), and ``headers``. Settings: optional ``from``,
    ``id_field`` (where the gateway's answer carries its message id, default ``id``),
    ``timeout``, ``deduplicates`` (true when the gateway drops a second request with the same
    ``Idempotency-Key``). The body is ``{"to", "from", "text", "message_id"}``.
    """

    channel = "sms"
    name = "http"
    required_credentials = ("url",)
    destination_credentials = ("url",)
    idempotency_field = "Idempotency-Key header"
    metadata_field = "message_id in the body"

    def deduplicates_for(self, integration: Integration | None) -> bool:
        return bool(integration is not None and integration.settings.get("deduplicates") is True)

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        if integration is None or not integration.credentials.get("url"):
            raise ProviderError("the http SMS provider needs a url", kind=ErrorKind.CONFIGURATION)
        creds = integration.credentials
        headers = {str(k): str(v) for k, v in (creds.get("headers") or {}).items()}
        headers["Idempotency-Key"] = idempotency_key(message)
        if creds.get("auth_token"):
            headers["Authorization"] = f"Bearer {creds['auth_token']}"
        auth = (creds["username"], creds.get("password", "")) if creds.get("username") else None
        body = {
            "to": message.recipient,
            "from": integration.settings.get("from", ""),
            "text": message.body,
            "message_id": str(message.pk),
        }
        response = http_post(
            creds["url"],
            what="SMS gateway",
            timeout=self.timeout(integration),
            json_body=body,
            headers=headers,
            auth=auth,
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        id_field = integration.settings.get("id_field", "id")
        provider_id = answer.get(id_field, "") if isinstance(answer, dict) else ""
        return SendResult(
            provider_message_id=str(provider_id or ""),
            response={"status_code": response.status_code, "body": answer},
            status_code=response.status_code,
        )
