"""Pushes to the live inbox over the channel layer. Call only after the rows are committed.

Every frame carries ``cursor``: the ``seq`` of the change it reports (apps.inbox.sequence). A
client keeps the highest cursor it has applied and, after a gap, replays
``GET /api/v1/inbox/changes?after=...`` from there, so it never misses a change.

The frames are complete: the consumer forwards them without reading anything (no query per
pushed message on the websocket side).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.inbox.auth import inbox_sessions_forget
from apps.inbox.models import InboxMessage
from apps.inbox.selectors import inbox_counts, inbox_message_data

logger = logging.getLogger(__name__)


def subscriber_group(*, environment_id: int, subscriber_pk: int) -> str:
    return f"inbox.{environment_id}.{subscriber_pk}"


def environment_group(*, environment_id: int) -> str:
    """Every open inbox socket of the environment: only session revocations are sent here."""
    return f"inbox.{environment_id}"


def _send_all(frames: list[tuple[str, dict[str, Any]]], members: dict[str, list[str]] | None = None) -> None:
    """``members``: the groups' members as ``_listening_at`` found them (the Redis layer)."""
    layer = get_channel_layer()
    if layer is None or not frames:
        return
    messages = [(group, {"type": "inbox.event", "frame": frame}) for group, frame in frames]
    try:
        send_many = getattr(layer, "group_send_many", None)
        if send_many is not None:
            # The Redis layer (apps.inbox.layers): synchronous, two round trips for the whole batch
            # (one when the members are known), on a process-wide pool: no event loop and no
            # connection made per push.
            if members is not None:
                send_many(messages, members=members)
            else:
                send_many(messages)
            return

        async def send() -> None:
            for group, message in messages:
                await layer.group_send(group, message)

        async_to_sync(send)()
    except Exception:  # the inbox re-syncs over REST; a push failure must not fail the run
        logger.exception("inbox push failed for %d frame(s)", len(frames))


def _listening_at(recipients: Sequence[tuple[int, int]]) -> tuple[list[int], dict[str, list[str]] | None]:
    """The positions of the ``(environment_id, subscriber_pk)`` recipients with an open inbox
    socket now, when the layer can tell (``InboxChannelLayer.groups_members``, one round trip);
    all of them otherwise. A fan-out to 100k subscribers, few of them online, then neither counts
    nor serialises the others' frames. A socket that joins a moment later catches up like any
    reconnecting client: it replays ``/changes`` from its cursor.

    Also the live groups' members when the layer found them, for ``_send_all``: the push then
    does not look them up a second time."""
    layer = get_channel_layer()
    lookup = getattr(layer, "groups_members", None)
    if lookup is None or not recipients:
        return list(range(len(recipients))), None
    groups = [subscriber_group(environment_id=env, subscriber_pk=pk) for env, pk in recipients]
    try:
        live: dict[str, list[str]] = lookup(sorted(set(groups)))
    except Exception:  # like a failed push: the inbox re-syncs over REST
        logger.exception("inbox push: could not look up open sockets for %d message(s)", len(recipients))
        return [], None
    return [i for i, group in enumerate(groups) if group in live], live


def _listening(messages: Sequence[InboxMessage]) -> tuple[list[InboxMessage], dict[str, list[str]] | None]:
    """The messages whose subscriber has an open inbox socket now (see ``_listening_at``)."""
    at, members = _listening_at([(m.environment_id, m.subscriber_id) for m in messages])
    return [messages[i] for i in at], members


def _publish_messages(
    messages: Sequence[InboxMessage],
    event: str,
    *,
    listening: bool = False,
    members: dict[str, list[str]] | None = None,
) -> None:
    """``listening``: the messages were already narrowed to the subscribers with an open socket;
    ``members``: then their groups' members, when the layer found them (``_listening_at``)."""
    if not listening:
        messages, members = _listening(messages)
    if not messages:
        return
    counts = inbox_counts(subscriber_ids={m.subscriber_id for m in messages})
    frames = [
        (
            subscriber_group(environment_id=m.environment_id, subscriber_pk=m.subscriber_id),
            {"event": event, "cursor": m.seq, "message": inbox_message_data(m), "counts": counts[m.subscriber_id]},
        )
        for m in sorted(messages, key=lambda m: m.seq)
    ]
    if members is None:
        _send_all(frames)
    else:
        _send_all(frames, members)


def publish_messages_created(messages: Sequence[InboxMessage]) -> None:
    """One ``message.created`` frame per message, carrying the subscriber's fresh counts."""
    _publish_messages(messages, "message.created")


def publish_rows_created(rows: Sequence[dict[str, Any]], pks: Sequence[int]) -> None:
    """``publish_messages_created`` for rows just inserted without model instances (``{attname:
    value}`` dicts and their primary keys): an instance is built only for a row whose subscriber
    has an open socket, the only ones that get a frame."""
    at, members = _listening_at([(row["environment_id"], row["subscriber_id"]) for row in rows])
    _publish_messages(
        [InboxMessage(pk=pks[i], **rows[i]) for i in at], "message.created", listening=True, members=members
    )


def publish_messages_updated(messages: Sequence[InboxMessage]) -> None:
    _publish_messages(messages, "message.updated")


def publish_counts(
    *, environment_id: int, subscriber_pk: int, cursor: int | None = None, change: dict[str, Any] | None = None
) -> None:
    """``counts.changed`` after a bulk write: ``cursor`` is the ``seq`` the write stamped on its
    rows and ``change`` says what it did (``{"action": "read-all", "categories": [...]}``); the
    client replays ``/changes`` to pick up the rows."""
    counts = inbox_counts(subscriber_ids=[subscriber_pk])[subscriber_pk]
    frame: dict[str, Any] = {"event": "counts.changed", "counts": counts}
    if cursor is not None:
        frame["cursor"] = cursor
    if change is not None:
        frame["change"] = change
    _send_all([(subscriber_group(environment_id=environment_id, subscriber_pk=subscriber_pk), frame)])


def publish_sessions_revoked(
    *, environment_id: int, subscriber_pk: int | None = None, version: int | None = None, reason: str
) -> None:
    """After a revocation committed: forget the sessions this process remembered as valid
    (apps.inbox.auth) and close the open inbox sockets it ended (the consumer closes with 4401).

    With ``subscriber_pk``: that subscriber's sockets (the subscriber was deleted). Without it:
    every socket of the environment whose token carries a session version below ``version``.
    """
    inbox_sessions_forget(environment_id=environment_id, subscriber_pk=subscriber_pk)
    message: dict[str, Any] = {"type": "inbox.revoke", "reason": reason}
    if subscriber_pk is not None:
        group = subscriber_group(environment_id=environment_id, subscriber_pk=subscriber_pk)
    else:
        group = environment_group(environment_id=environment_id)
        message["version"] = version
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        send_many = getattr(layer, "group_send_many", None)
        if send_many is not None:
            send_many([(group, message)])
            return
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # the sockets' next request or reconnect is refused anyway (token version)
        logger.exception("inbox revocation push failed for %s", group)
