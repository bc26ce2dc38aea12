from __future__ import annotations

import factory

from apps.preferences.models import Preference
from tests.factories import SubscriberFactory


class PreferenceFactory(factory.django.DjangoModelFactory):
    """A global channel choice unless ``category`` is given."""

    class Meta:
        model = Preference

    subscriber = factory.SubFactory(SubscriberFactory)
    environment = factory.SelfAttribute("subscriber.environment")
    category = None
    channel = "email"
    enabled = False
