"""drf-spectacular descriptions of Clarion's authentication schemes."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class SecretKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apps.tenancy.auth.SecretKeyAuthentication"
    name = "SecretKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk_…",
            "description": "The environment's secret key: `Authorization: Bearer sk_...`. Server-side only.",
        }
