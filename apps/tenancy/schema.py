"""drf-spectacular descriptions of Clarion's authentication schemes."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class SecretKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apps.tenancy.auth.SecretKeyAuthentication"
    name = "SecretKey"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk_…",
            "description": "The environment's secret key: `Authorization: Bearer sk_...`. Server-side only.",
        }
