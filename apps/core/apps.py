from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Clarion core"

    def ready(self) -> None:
        from apps.core.db import register_fork_safety

        register_fork_safety()
