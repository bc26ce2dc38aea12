from django.apps import AppConfig


class TemplatesConfig(AppConfig):
    name = "apps.templates"
    label = "notification_templates"
    verbose_name = "Templates"
