"""One message lifecycle for every channel, and the rule that keeps it moving forward only.

    queued → sending → (in_doubt) → sent → delivered → opened → clicked
                                    ↘ bounced / failed

Delivered, bounced and failed end delivery; opened and clicked (and in-app ``read``) are
engagement after delivery. ``in_doubt`` is a send whose outcome is unknown (the provider may have
accepted it): any callback from the provider (sent, delivered, bounced…) moves it on. A status
update is applied only when it moves the message forward, so a duplicate or late callback ("sent"
after "delivered", "delivered" after "opened") changes nothing, and nothing leaves bounced or
failed.
"""

from __future__ import annotations

from apps.delivery.models import Message

S = Message.Status

RANK: dict[str, int] = {
    S.QUEUED: 0,
    S.SENDING: 1,
    S.IN_DOUBT: 2,
    S.SENT: 3,
    S.DELIVERED: 4,
    S.OPENED: 5,
    S.READ: 5,
    S.CLICKED: 6,
}
FAILURES = frozenset({S.BOUNCED, S.FAILED})
ALL_STATUSES = tuple(S.values)


def can_move(current: str, new: str) -> bool:
    """Whether a message in ``current`` may move to ``new``."""
    if new == current or current in FAILURES:
        return False
    if new in FAILURES:
        # A failure only ends a message that was not yet delivered.
        return RANK.get(current, 0) <= RANK[S.SENT]
    return RANK.get(new, -1) > RANK.get(current, 0)


def statuses_that_may_move_to(new: str) -> list[str]:
    """The statuses from which ``new`` is a forward move: the filter of one conditional UPDATE."""
    return [status for status in ALL_STATUSES if can_move(status, new)]
