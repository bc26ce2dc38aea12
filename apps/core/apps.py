from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Clarion core"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from apps.core.db import register_fork_safety, use_socket_first_pool_check

        register_fork_safety()
        connection_created.connect(use_socket_first_pool_check, dispatch_uid="clarion-pool-check")
