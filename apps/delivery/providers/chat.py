"""Chat through incoming webhooks: Slack, Discord and Microsoft Teams.

Where a message goes: the subscriber's own chat endpoints for that provider (registered as
devices, ``POST /subscribers/{id}/devices`` with ``provider: slack`` and the webhook URL as
``token``), else the integration's ``webhook_url`` (a team channel). A webhook the service
reports as gone (404/410) is removed from the subscriber.
"""

from __future__ import annotations

from typing import Any, ClassVar

from apps.delivery.models import Integration, Message
from apps.delivery.providers.base import ErrorKind, Provider, ProviderError, SendResult, http_post, register
from apps.delivery.providers.fanout import Destination, send_to_each, subscriber_devices


class ChatProvider(Provider):
    channel = "chat"
    destination_credentials = ("webhook_url",)
    payload_kind: ClassVar[str]
    uses_devices = True

    def destinations(self, message: Message, integration: Integration | None) -> list[Destination]:
        if message.subscriber_id:
            devices = subscriber_devices(message, self.name)
            if devices:
                return [Destination(url=d.token, device_id=d.pk) for d in devices]
        url = (integration.credentials.get("webhook_url") if integration else "") or ""
        return [Destination(url=url)] if url else []

    def payload(self, message: Message) -> dict[str, Any]:
        raise NotImplementedError

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        destinations = self.destinations(message, integration)
        if not destinations:
            raise ProviderError(f"no {self.name} webhook for this subscriber", kind=ErrorKind.NO_DESTINATION)
        payload = self.payload(message)
        timeout = self.timeout(integration)

        def post(destination: Destination) -> dict[str, Any]:
            response = http_post(destination.url, what=self.name.title(), timeout=timeout, json_body=payload)
            return {"status_code": response.status_code}

        return send_to_each(destinations, post)


def _text(message: Message) -> str:
    return message.body or message.subject


@register
class Slack(ChatProvider):
    name = "slack"
    metadata_field = "metadata.event_payload.clarion_message_id"

    def payload(self, message: Message) -> dict[str, Any]:
        text = _text(message)
        blocks: list[dict[str, Any]] = []
        if message.subject and message.body:
            blocks.append({"type": "header", "text": {"type": "plain_text", "text": message.subject[:150]}})
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
        action_url = (message.data or {}).get("action_url")
        if action_url:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open"}, "url": action_url}],
                }
            )
        return {
            "text": f"{message.subject}\n{text}" if message.subject and message.body else text,
            "blocks": blocks,
            # Message metadata (incoming webhooks accept it): apps reading the channel see the id.
            "metadata": {
                "event_type": "clarion_notification",
                "event_payload": {"clarion_message_id": str(message.pk)},
            },
        }


@register
class Discord(ChatProvider):
    name = "discord"

    def payload(self, message: Message) -> dict[str, Any]:
        action_url = (message.data or {}).get("action_url")
        if message.subject and message.body:
            embed: dict[str, Any] = {"title": message.subject[:256], "description": message.body[:4096]}
            if action_url:
                embed["url"] = action_url
            return {"embeds": [embed], "allowed_mentions": {"parse": []}}
        return {"content": _text(message)[:2000], "allowed_mentions": {"parse": []}}


@register
class MicrosoftTeams(ChatProvider):
    """An Adaptive Card, which both Teams Workflows webhooks and the older connectors accept."""

    name = "msteams"

    def payload(self, message: Message) -> dict[str, Any]:
        body: list[dict[str, Any]] = []
        if message.subject:
            body.append({"type": "TextBlock", "text": message.subject, "weight": "Bolder", "size": "Medium"})
        if message.body:
            body.append({"type": "TextBlock", "text": message.body, "wrap": True})
        card: dict[str, Any] = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        }
        action_url = (message.data or {}).get("action_url")
        if action_url:
            card["actions"] = [{"type": "Action.OpenUrl", "title": "Open", "url": action_url}]
        return {
            "type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
        }
