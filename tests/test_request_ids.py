"""Generated request ids (design.md §2.4 `X-Request-Id`): 32 hex characters, unique in a process,
a new random prefix after a fork (so forked workers never repeat each other's ids)."""

from __future__ import annotations

import re

from dcr_sidecar.proxy.boundary import _RequestIds

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_generated_ids_are_32_hex_characters_and_unique() -> None:
    ids = _RequestIds()
    drawn = [ids.next() for _ in range(10_000)]
    assert all(HEX32.match(i) for i in drawn)
    assert len(set(drawn)) == len(drawn)


def test_a_reset_draws_a_new_prefix() -> None:
    """What the at-fork hook does in a child process."""
    ids = _RequestIds()
    before = ids.next()
    ids.reset()
    after = ids.next()
    assert before[:16] != after[:16]
    assert after[16:] == "0" * 16
