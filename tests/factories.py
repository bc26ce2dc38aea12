"""factory_boy factories for the domain. Keys are issued through the real service."""

from __future__ import annotations

import factory

from apps.delivery.models import Integration
from apps.inbox.models import InboxMessage
from apps.preferences.models import Category
from apps.subscribers.models import Subscriber, Topic, TopicSubscription
from apps.templates.models import Template, TemplateVersion
from apps.tenancy.models import Environment, Project


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"Project {n}")
    slug = factory.Sequence(lambda n: f"project-{n}")


class EnvironmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Environment

    project = factory.SubFactory(ProjectFactory)
    name = "production"
    slug = factory.Sequence(lambda n: f"env-{n}")


class SubscriberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscriber

    environment = factory.SubFactory(EnvironmentFactory)
    subscriber_id = factory.Sequence(lambda n: f"user-{n}")
    email = factory.LazyAttribute(lambda o: f"{o.subscriber_id}@example.com")
    first_name = "Ada"
    last_name = "Lovelace"
    locale = "en"


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic

    environment = factory.SubFactory(EnvironmentFactory)
    key = factory.Sequence(lambda n: f"topic-{n}")
    name = factory.LazyAttribute(lambda o: o.key)


class TopicSubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TopicSubscription

    topic = factory.SubFactory(TopicFactory)
    subscriber = factory.SubFactory(SubscriberFactory, environment=factory.SelfAttribute("..topic.environment"))


class CategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Category

    environment = factory.SubFactory(EnvironmentFactory)
    key = factory.Sequence(lambda n: f"category-{n}")
    name = factory.LazyAttribute(lambda o: o.key.title())


class TemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Template

    environment = factory.SubFactory(EnvironmentFactory)
    key = factory.Sequence(lambda n: f"template-{n}")
    name = factory.LazyAttribute(lambda o: o.key)
    channel = "in_app"


class TemplateVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TemplateVersion

    template = factory.SubFactory(TemplateFactory)
    number = factory.Sequence(lambda n: n + 1)
    title_en = "Hello {{ subscriber.first_name }}"
    body_en = "{{ payload.message }}"
    subject_en = "Subject {{ payload.message }}"


class IntegrationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Integration

    environment = factory.SubFactory(EnvironmentFactory)
    channel = "email"
    provider = "smtp"
    priority = 0


class InboxMessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InboxMessage

    subscriber = factory.SubFactory(SubscriberFactory)
    environment = factory.SelfAttribute("subscriber.environment")
    title = factory.Sequence(lambda n: f"Message {n}")
    body = "Body"
