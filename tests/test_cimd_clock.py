"""The CIMD key ring reads the resolver's injected clock (dcr_sidecar/clock.py), not the real
one: a signer asked for "the key signing now" answers for the clock it was given. A key set
made on a hand-moved clock a day ahead has no key that signs at the real time, so a signer on
the real clock would fail where the resolver's clock says a key is in force."""

from __future__ import annotations

import pytest

from dcr_sidecar.cimd import CimdKeys, KeyRingSigner, schedule
from dcr_sidecar.oauth import cimd
from dcr_sidecar.observability import Redactor
from dcr_sidecar.store.memory import MemoryStore
from tests.support.clock import HandClock

DAY = 86400.0


async def test_the_key_ring_signs_with_the_key_of_its_clocks_now() -> None:
    clock = HandClock()
    clock.advance(DAY)  # the resolver's clock is a day ahead of the real one
    keys = CimdKeys(MemoryStore(), 30.0, Redactor(), clock)
    record = await keys.record("acme")
    [made] = schedule(record)
    assert made.signs_from > clock.time() - 2  # made on the hand clock: signs from "now"

    signer = KeyRingSigner(record, clock)
    assert signer.kid == made.kid
    assert signer.alg == cimd.CIMD_ALG
    jws = signer.compact_jws({"alg": signer.alg, "kid": signer.kid, "typ": "JWT"},
                             {"iss": "acme", "iat": int(clock.time())})
    assert jws.count(".") == 2

    real = KeyRingSigner(record)  # the real clock: a day before the key signs
    with pytest.raises(ValueError, match="no key that signs now"):
        _ = real.kid
