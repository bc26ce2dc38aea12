"""What every app's admin shares: read-only pages for trace tables, JSON shown safely, recorded actions.

Trace tables (events, runs, step decisions, messages, attempts, provider callbacks, preference
history, ...) are what the console answers "what happened and why" from: staff read them and act
on them only through documented actions, each of which calls the owning app's service and leaves
an entry in the admin's history (LogEntry). See docs/console.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import Model
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from unfold.admin import ModelAdmin, TabularInline
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from apps.core.models import DeferredTask


def pretty_json(value: Any) -> SafeString:
    """JSON indented in a <pre>, every character escaped (a payload is anyone's text)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return format_html('<pre class="clarion-json">{}</pre>', text)


class ReadOnlyAdmin(ModelAdmin):
    """A record, not a form: viewable, never added, edited or deleted from the admin.

    The change page renders every field read-only with no save button, and a POST to it is
    refused (403). Actions that change state declare ``permissions=["operate"]``: they need the
    model's Django change permission, which the page itself never uses for editing."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return bool(request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}"))


class ReadOnlyInline(TabularInline):
    """Rows shown beside their parent: no add row, no edit, no delete box."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def record_action(model_admin: admin.ModelAdmin, request: HttpRequest, objects: Iterable[Model], what: str) -> None:
    """One history entry per object an action changed (admin → the object's "History")."""
    for obj in objects:
        model_admin.log_change(request, obj, what)


@admin.register(DeferredTask)
class DeferredTaskAdmin(ReadOnlyAdmin):
    """Wake-ups the broker refused, waiting for the ticker to enqueue them again."""

    list_display = ["pk", "func", "attempts", "next_try_at", "created_at", "last_error"]
    search_fields = ["func"]
    fields = readonly_fields = ("func", "args_display", "attempts", "next_try_at", "last_error", "created_at")

    @admin.display(description="args")
    def args_display(self, obj: DeferredTask) -> SafeString:
        return pretty_json(obj.args)


# The home is the console's overview (templates/admin/index.html), not Django's model index.
admin.site.index_title = "Overview"

# The console's theme (django-unfold) styles the forms of the admin pages Django itself registers:
# users and groups get unfold's ModelAdmin and its user forms (password change included).
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(BaseUserAdmin, ModelAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    pass
