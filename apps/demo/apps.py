from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo a newcomer meets in `make run`: its content, the seed command and the live inbox page.
    It owns no tables: it creates its rows through the other apps' services."""

    name = "apps.demo"
    label = "demo"
    verbose_name = "Demo"
