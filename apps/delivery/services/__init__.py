"""Writes for delivery, one module per concern; every public name is importable from here.

* ``sending`` — the one Message constructor (``message_build``, ``messages_create_bulk``) and
  delivery: claiming, retries, failover, the in-doubt rule, redrive;
* ``circuit`` — the per-integration circuit breaker and rate limit;
* ``suppressions`` — inactive email addresses and phone numbers;
* ``statuses`` — provider callbacks moving messages forward;
* ``integrations`` — configured providers and the admin's test send;
* ``config`` — the tunables (``settings.CLARION_DELIVERY``).

The address rule (``channel_address``) lives in ``apps.delivery.addresses`` and is re-exported here.
"""

from apps.delivery.addresses import address_normalize, channel_address, subscriber_recipient
from apps.delivery.services.config import DeliveryConfig, delivery_config
from apps.delivery.services.integrations import (
    INTEGRATION_FIELDS,
    integration_create,
    integration_delete,
    integration_send_test,
    integration_update,
)
from apps.delivery.services.sending import (
    CIRCUIT_KINDS,
    DELIVER_TASK,
    FAILOVER_KINDS,
    integrations_for,
    message_build,
    message_deliver,
    message_resend,
    message_send_now,
    messages_create_bulk,
    messages_deliver,
    messages_redrive,
    messages_requeue_stalled,
)
from apps.delivery.services.statuses import StatusEvent, message_events_record, message_status_apply
from apps.delivery.services.suppressions import SUPPRESSIBLE_CHANNELS, address_suppress

__all__ = [
    "CIRCUIT_KINDS",
    "DELIVER_TASK",
    "FAILOVER_KINDS",
    "INTEGRATION_FIELDS",
    "SUPPRESSIBLE_CHANNELS",
    "DeliveryConfig",
    "StatusEvent",
    "address_normalize",
    "address_suppress",
    "channel_address",
    "delivery_config",
    "integration_create",
    "integration_delete",
    "integration_send_test",
    "integration_update",
    "integrations_for",
    "message_build",
    "message_deliver",
    "message_events_record",
    "message_resend",
    "message_send_now",
    "message_status_apply",
    "messages_create_bulk",
    "messages_deliver",
    "messages_redrive",
    "messages_requeue_stalled",
    "subscriber_recipient",
]
