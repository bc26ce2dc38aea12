"""Firebase Cloud Messaging, HTTP v1 API, through firebase-admin.

Credentials: ``service_account`` (the service account JSON, as an object). One firebase App per
integration (named by its id and a hash of the credentials, so edited credentials take effect).
Devices: ``provider: fcm``, ``token`` = the registration token.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from typing import Any

import firebase_admin
import requests
from firebase_admin import credentials as fb_credentials
from firebase_admin import exceptions as fb_exceptions
from firebase_admin import messaging

from apps.delivery.models import Integration, Message
from apps.delivery.providers.base import (
    ErrorKind,
    Provider,
    ProviderError,
    SendResult,
    error_from_requests_exception,
    parse_retry_after,
    register,
)
from apps.delivery.providers.fanout import DeadDestination, Destination, send_to_each, subscriber_devices
from apps.delivery.providers.webpush import push_payload

_apps_lock = threading.Lock()

# firebase-admin error classes → what Clarion does with them.
_RETRYABLE = {
    messaging.QuotaExceededError: ErrorKind.RATE_LIMITED,
    fb_exceptions.ResourceExhaustedError: ErrorKind.RATE_LIMITED,
    fb_exceptions.UnavailableError: ErrorKind.SERVER_ERROR,
    fb_exceptions.InternalError: ErrorKind.SERVER_ERROR,
    fb_exceptions.DeadlineExceededError: ErrorKind.TIMEOUT,
    fb_exceptions.UnknownError: ErrorKind.CONNECTION,
}
_TERMINAL = {
    fb_exceptions.UnauthenticatedError: ErrorKind.AUTH,
    fb_exceptions.PermissionDeniedError: ErrorKind.AUTH,
    messaging.ThirdPartyAuthError: ErrorKind.AUTH,
    messaging.SenderIdMismatchError: ErrorKind.INVALID_ADDRESS,
}


def firebase_app(integration: Integration) -> firebase_admin.App:
    info = integration.credentials.get("service_account")
    if isinstance(info, str):
        info = json.loads(info)
    if not isinstance(info, dict):
        raise ProviderError(
            "FCM needs the service account JSON in credentials.service_account", kind=ErrorKind.CONFIGURATION
        )
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:12]
    name = f"clarion-{integration.pk}-{digest}"
    with _apps_lock:
        try:
            return firebase_admin.get_app(name)
        except ValueError:
            pass
        try:
            credential = fb_credentials.Certificate(info)
        except (ValueError, KeyError) as exc:
            raise ProviderError(f"invalid FCM service account: {exc}", kind=ErrorKind.CONFIGURATION) from exc
        options = {"httpTimeout": Provider.timeout(integration)}
        if info.get("project_id"):
            options["projectId"] = info["project_id"]
        return firebase_admin.initialize_app(credential, options=options, name=name)


def fcm_error(exc: fb_exceptions.FirebaseError) -> ProviderError:
    http = exc.http_response
    status = getattr(http, "status_code", None)
    retry_after = parse_retry_after(http.headers.get("Retry-After")) if http is not None else None
    text = f"FCM {exc.code}: {exc}"[:1000]
    if isinstance(exc, messaging.UnregisteredError) or (isinstance(exc, fb_exceptions.NotFoundError) and status == 404):
        return DeadDestination(text, status_code=status or 404)
    if isinstance(exc, fb_exceptions.InvalidArgumentError) and "registration token" in str(exc).lower():
        return DeadDestination(text, status_code=status or 400)
    cause = exc.cause
    if http is None and isinstance(cause, requests.RequestException):
        # No answer: firebase-admin wraps the requests failure (refused → UNAVAILABLE, timeout →
        # DEADLINE_EXCEEDED); whether the push may have gone out depends on when it failed.
        return error_from_requests_exception(cause, what="FCM")
    for cls, kind in {**_RETRYABLE, **_TERMINAL}.items():
        if isinstance(exc, cls):
            return ProviderError(text, kind=kind, status_code=status, retry_after=retry_after)
    return ProviderError(text, kind=ErrorKind.REJECTED, status_code=status, retry_after=retry_after)


@register
class FirebaseCloudMessaging(Provider):
    channel = "push"
    name = "fcm"
    required_credentials = ("service_account",)
    metadata_field = "message_id in the data payload"
    uses_devices = True

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        if integration is None:
            raise ProviderError("FCM needs an integration", kind=ErrorKind.CONFIGURATION)
        devices = subscriber_devices(message, self.name)
        if not devices:
            raise ProviderError("the subscriber has no FCM device", kind=ErrorKind.NO_DESTINATION)
        app = firebase_app(integration)
        payload = push_payload(message)
        data = {k: str(v) for k, v in payload.items() if k not in ("title", "body")}

        def push(destination: Destination) -> dict[str, Any]:
            with warnings.catch_warnings():
                # firebase-admin 7.7 prefers installation ids (``fid``); registration tokens, which
                # apps register today, still work and are what ``token`` carries.
                warnings.simplefilter("ignore", DeprecationWarning)
                fcm_message = messaging.Message(
                    token=destination.token,
                    notification=messaging.Notification(title=message.subject or None, body=message.body or None),
                    data=data,
                )
            try:
                name = messaging.send(fcm_message, app=app)
            except fb_exceptions.FirebaseError as exc:
                raise fcm_error(exc) from exc
            except ValueError as exc:  # rejected locally (e.g. an empty token)
                raise DeadDestination(f"invalid FCM token: {exc}") from exc
            return {"status_code": 200, "id": name}

        return send_to_each([Destination(token=d.token, device_id=d.pk) for d in devices], push)
