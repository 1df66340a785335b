"""RFC 8707 resource indicators: the configured resource, added when the app named none."""

from __future__ import annotations

from collections.abc import Sequence


def with_default_resource(pairs: Sequence[tuple[str, str]],
                          resource: str | None) -> list[tuple[str, str]]:
    """`pairs` plus `resource` (RFC 8707 §2.1 authorize, §2.2 token), unless there is no
    default or the app sent its own (several are allowed; the app's choice stands)."""
    if resource is None or any(k == "resource" for k, _ in pairs):
        return list(pairs)
    return [*pairs, ("resource", resource)]
