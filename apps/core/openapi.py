"""drf-spectacular's AutoSchema for Clarion (``DEFAULT_SCHEMA_CLASS``).

A module of its own: apps.core.schema is imported by the JSON parser, which DRF's settings load
before drf_spectacular.openapi can be imported.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import is_list_serializer
from rest_framework import serializers


class ClarionAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the item bounds of nested ``many=True`` serializers
    (``allow_empty=False``, ``min_length``, ``max_length``), which it leaves out."""

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> Any:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        listish = is_list_serializer(field) or isinstance(field, serializers.ListField)
        if listish and isinstance(schema, dict) and schema.get("type") == "array":
            min_length = getattr(field, "min_length", None)
            if min_length is None and getattr(field, "allow_empty", True) is False:
                min_length = 1
            if min_length is not None:
                schema.setdefault("minItems", min_length)
            if getattr(field, "max_length", None) is not None:
                schema.setdefault("maxItems", field.max_length)
        return schema

    def _map_basic_serializer(self, serializer: Any, direction: str) -> Any:
        """A serializer that refuses keys it does not know (``rejects_unknown_fields``) says so in
        its request schema; keys it accepts and ignores (``IGNORED_KEYS``) are listed."""
        schema = super()._map_basic_serializer(serializer, direction)
        if direction == "request" and getattr(serializer, "rejects_unknown_fields", False):
            for key in sorted(getattr(serializer, "IGNORED_KEYS", ())):
                schema.setdefault("properties", {})[key] = {"description": "Accepted and ignored (read-only)."}
            schema["additionalProperties"] = False
        return schema
