"""What the demo environment holds: a subscriber, a category, a layout, two templates (in-app and
email, in English, French and German, with sample payloads) and the workflow that sends them."""

from __future__ import annotations

from typing import Any, Final

ENVIRONMENT_NAME: Final = "development"
PROJECT_NAME: Final = "Demo"
SUBSCRIBER_ID: Final = "demo-user"
SUBSCRIBER: Final[dict[str, Any]] = {
    "email": "demo@example.com",
    "first_name": "Dana",
    "last_name": "Demo",
    "locale": "en",
}
CATEGORY: Final[dict[str, Any]] = {
    "key": "comments",
    "name": "Comments",
    "description": "Replies and comments on your posts",
    "default_channels": {"in_app": True, "email": True},
}
LAYOUT_KEY: Final = "demo"
LAYOUT: Final[dict[str, Any]] = {
    "name": "Demo layout",
    "header": {"en": "<strong>Clarion demo</strong>"},
    "footer": {
        "en": "You get this because you follow posts on the Clarion demo.",
        "fr": "Vous recevez ceci car vous suivez des publications sur la démo Clarion.",
        "de": "Sie erhalten dies, weil Sie Beiträgen in der Clarion-Demo folgen.",
    },
    "brand_color": "#4f46e5",
    "show_unsubscribe": True,
}

WORKFLOW_KEY: Final = "comment-created"
# What the README's curl, the banner's curl and the demo page's curl send.
PAYLOAD: Final[dict[str, str]] = {"post_title": "Hello", "comment": "First!", "author": "Grace"}

IN_APP: Final = {
    "en": {"title": "{{ payload.author }} commented on {{ payload.post_title }}", "body": "“{{ payload.comment }}”"},
    "fr": {
        "title": "{{ payload.author }} a commenté {{ payload.post_title }}",
        "body": "« {{ payload.comment }} »",
    },
    "de": {
        "title": "{{ payload.author }} hat {{ payload.post_title }} kommentiert",
        "body": "„{{ payload.comment }}“",
    },
}
EMAIL: Final = {
    "en": {
        "subject": "New comment on {{ payload.post_title }}",
        "body": "<p>Hi {{ subscriber.first_name or 'there' }},</p>"
        "<p>{{ payload.author }} wrote: <em>{{ payload.comment }}</em></p>",
    },
    "fr": {
        "subject": "Nouveau commentaire sur {{ payload.post_title }}",
        "body": "<p>Bonjour {{ subscriber.first_name or '' }},</p>"
        "<p>{{ payload.author }} a écrit : <em>{{ payload.comment }}</em></p>",
    },
    "de": {
        "subject": "Neuer Kommentar zu {{ payload.post_title }}",
        "body": "<p>Hallo {{ subscriber.first_name or '' }},</p>"
        "<p>{{ payload.author }} schrieb: <em>{{ payload.comment }}</em></p>",
    },
}
TEMPLATES: Final[list[dict[str, Any]]] = [
    {"key": "comment-in-app", "name": "Comment (in-app)", "channel": "in_app", "content": IN_APP},
    {"key": "comment-email", "name": "Comment (email)", "channel": "email", "content": EMAIL, "body_format": "html"},
]
STEPS: Final[list[dict[str, Any]]] = [
    {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
    {"id": "wait", "type": "delay", "for": "1m"},
    {"id": "mail", "type": "email", "template": "comment-email", "if": "not steps.inbox.read"},
]
WORKFLOW: Final[dict[str, Any]] = {
    "key": WORKFLOW_KEY,
    "name": "New comment",
    "description": "In-app at once; an email a minute later if the in-app message is still unread.",
    "category_key": "comments",
    "steps": STEPS,
}
