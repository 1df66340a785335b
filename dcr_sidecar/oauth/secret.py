"""The secret type: a string that never shows itself in repr, str, logs or JSON.

Standard library only at import time; the pydantic hooks import pydantic lazily, so the pure
protocol layer can hold secrets without depending on pydantic.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import core_schema

MASK = "**********"


def digest(value: str) -> bytes:
    """SHA-256 of any text a client sends (lone surrogates included): always 32 bytes."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def matches_digest(expected: bytes, given: str) -> bool:
    """`given`'s digest against a digest made once (:func:`digest`): two 32-byte values, so
    constant time whatever the lengths. The one constant-time comparison of the sidecar."""
    return hmac.compare_digest(expected, digest(given))


def constant_time_equal(expected: str, given: str) -> bool:
    """Constant time in the content and the length of both (digests of equal length are
    compared). The comparison of inbound credentials and tokens."""
    return matches_digest(digest(expected), given)


class Secret:
    """Holds a secret value; only :meth:`reveal` gives it back."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison (for inbound credentials), length included: the digests
        compared always have the same length."""
        return constant_time_equal(self._value, candidate)

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and constant_time_equal(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls._coerce,
            core_schema.union_schema(
                [core_schema.is_instance_schema(cls), core_schema.str_schema()]
            ),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _: MASK),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "password", "writeOnly": True}

    @classmethod
    def _coerce(cls, value: Secret | str) -> Secret:
        return value if isinstance(value, Secret) else cls(value)
