from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "apps.tenancy"
    label = "tenancy"
    verbose_name = "Projects and environments"

    def ready(self) -> None:
        from apps.tenancy import keycache, schema  # noqa: F401  (forgets keys on change; the OpenAPI auth scheme)
