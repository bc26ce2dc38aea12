"""The console's sidebar (django-unfold's ``UNFOLD["SIDEBAR"]["navigation"]``): pages grouped by what
people do — Activity, Workflows, Content, Audience, Delivery, Settings — rather than by app.

Each link shows only to staff who may view its page (the model's Django view or change
permission, as the admin's own index decides); a group whose links are all hidden is not shown.
The groups name models by ``app_label.model_name`` only, so this module imports no app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext_lazy as _

# (group title, [(link title, Material Symbols icon, "app_label.model_name"), ...])
GROUPS: list[tuple[Any, list[tuple[Any, str, str]]]] = [
    (
        _("Activity"),
        [
            (_("Events"), "bolt", "events.event"),
            (_("Runs"), "route", "workflows.run"),
            (_("Messages"), "mail", "delivery.message"),
            (_("Inbox messages"), "inbox", "inbox.inboxmessage"),
            (_("Digest buckets"), "stacks", "workflows.digestbucket"),
            (_("Deferred tasks"), "schedule", "core.deferredtask"),
        ],
    ),
    (
        _("Workflows"),
        [
            (_("Workflows"), "account_tree", "workflows.workflow"),
            (_("Workflow versions"), "history", "workflows.workflowversion"),
            (_("Frequency caps"), "speed", "workflows.frequencycap"),
        ],
    ),
    (
        _("Content"),
        [
            (_("Templates"), "article", "notification_templates.template"),
            (_("Template versions and translations"), "translate", "notification_templates.templateversion"),
            (_("Email layouts"), "web", "notification_templates.emaillayout"),
        ],
    ),
    (
        _("Audience"),
        [
            (_("Subscribers"), "group", "subscribers.subscriber"),
            (_("Topics"), "tag", "subscribers.topic"),
            (_("Devices"), "devices", "subscribers.device"),
            (_("Categories"), "category", "preferences.category"),
            (_("Preferences"), "tune", "preferences.preference"),
            (_("Workflow preferences"), "rule", "preferences.workflowpreference"),
            (_("Quiet hours"), "bedtime", "preferences.quiethours"),
            (_("Category frequencies"), "timer", "preferences.categoryfrequency"),
            (_("Preference history"), "manage_history", "preferences.preferencechange"),
        ],
    ),
    (
        _("Delivery"),
        [
            (_("Integrations"), "hub", "delivery.integration"),
            (_("Suppressions"), "block", "delivery.suppression"),
            (_("Queued tasks"), "queue", "django_q.ormq"),
            (_("Failed tasks"), "error", "django_q.failure"),
            (_("Successful tasks"), "task_alt", "django_q.success"),
            (_("Scheduled tasks"), "event_repeat", "django_q.schedule"),
        ],
    ),
    (
        _("Settings"),
        [
            (_("Projects"), "folder", "tenancy.project"),
            (_("Environments"), "dns", "tenancy.environment"),
            (_("API keys"), "key", "tenancy.apikey"),
            (_("Users"), "person", "auth.user"),
            (_("Groups"), "groups", "auth.group"),
            (_("Login attempts"), "login", "axes.accessattempt"),
            (_("Login failures"), "gpp_maybe", "axes.accessfailurelog"),
            (_("Login log"), "receipt_long", "axes.accesslog"),
        ],
    ),
]


def may_view(model: str) -> Callable[[HttpRequest], bool]:
    """Whether the request's user may see ``app_label.model_name``'s page (view or change permission)."""
    app_label, model_name = model.split(".")

    def check(request: HttpRequest) -> bool:
        user = request.user
        return bool(
            user.is_active
            and user.is_staff
            and (user.has_perm(f"{app_label}.view_{model_name}") or user.has_perm(f"{app_label}.change_{model_name}"))
        )

    return check


def _is_staff(request: HttpRequest) -> bool:
    return bool(request.user.is_active and request.user.is_staff)


def sidebar(request: HttpRequest) -> list[dict[str, Any]]:
    """The navigation unfold draws in the sidebar, for this request (links resolved, permissions attached)."""
    groups: list[dict[str, Any]] = [
        {
            "title": None,
            "items": [
                {"title": _("Home"), "icon": "dashboard", "link": reverse("admin:index"), "permission": _is_staff},
                {
                    "title": _("Savings report"),
                    "icon": "savings",
                    "link": reverse("analytics-savings"),
                    "permission": _is_staff,
                },
            ],
        }
    ]
    for title, links in GROUPS:
        items = []
        for link_title, icon, model in links:
            app_label, model_name = model.split(".")
            try:
                link = reverse(f"admin:{app_label}_{model_name}_changelist")
            except NoReverseMatch:  # not in the admin here (django-q2's queue page exists on its ORM broker only)
                continue
            items.append({"title": link_title, "icon": icon, "link": link, "permission": may_view(model)})
        groups.append({"title": title, "separator": True, "collapsible": False, "items": items})
    return groups


def console_styles(request: HttpRequest) -> str:
    """The console's own stylesheet on every admin page, after unfold's (static/clarion/admin/console.css)."""
    return static("clarion/admin/console.css")
