"""The resolver's face (dcr_sidecar.resolver.face): what others read is a frozen snapshot in
wall-clock time, copied at the call; an unknown upstream is NotFound."""

from __future__ import annotations

import ast
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcr_sidecar import errors
from tests.conftest import FakeFactory, SidecarFactory
from tests.test_faults import get, registering_as, upstream


async def test_snapshot_is_frozen_and_in_wall_clock_time(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """A registration answered 429 + Retry-After: 120: the snapshot says backing off until
    about now + 120 s (wall clock, not monotonic), names the step, and cannot be changed."""
    fake = await fake_server()
    await registering_as(fake, {"error": "slow_down"}, status=429)
    fake.json("POST", "/register", {"error": "slow_down"}, status=429,
              headers={"Retry-After": "120"})
    side = await sidecar(upstream(fake.url))
    before = side.resolver.snapshot("acme")
    assert before.backoff_until is None
    assert not before.backing_off
    status, _, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 503
    snap = side.resolver.snapshot("acme")
    assert snap.backoff_until is not None
    assert time.time() + 110 <= snap.backoff_until <= time.time() + 121
    assert snap.backing_off
    assert (snap.failures, snap.last_error_step) == (1, "register")
    assert snap.issuer == fake.url
    assert snap.metadata_expires_at is not None
    assert snap.metadata_expires_at > time.time()
    assert snap.credentials is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.failures = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.stats["discoveries"] = 0  # type: ignore[index]
    assert (before.failures, before.last_error_step) == (0, None)  # copied at the call


async def test_snapshot_of_an_unknown_upstream_is_not_found(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    await registering_as(fake)
    side = await sidecar(upstream(fake.url))
    with pytest.raises(errors.NotFound):
        side.resolver.snapshot("nope")


PRIVATE = {"dcr_sidecar.resolver.state", "dcr_sidecar.resolver.core",
           "dcr_sidecar.resolver.generations", "dcr_sidecar.resolver.recovery",
           "dcr_sidecar.resolver.maintenance"}
ROOT = Path(__file__).resolve().parents[1]


def _outside_the_resolver() -> Iterator[Path]:
    for top in ("dcr_sidecar", "tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "resolver" not in path.relative_to(ROOT).parts[:2] and \
                    "node_modules" not in path.parts:
                yield path


def _reaches_in(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            yield from sorted(names & PRIVATE)
            if any(a.name == "UpstreamState" for a in node.names):
                yield "UpstreamState"
        elif isinstance(node, ast.Import):
            yield from sorted({a.name for a in node.names} & PRIVATE)
        elif isinstance(node, ast.Name) and node.id == "UpstreamState":
            yield "UpstreamState"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name == "resolver":
                yield f"resolver.{node.attr}"


def test_nothing_outside_the_resolver_reaches_into_it() -> None:
    """Issue 12's acceptance, kept: no module outside dcr_sidecar/resolver/ imports its private
    modules (state, core, generations, recovery, maintenance) or names UpstreamState, and none
    reads a private attribute of a resolver; they use the face (Snapshot, Credentials, verbs)."""
    found = {str(path.relative_to(ROOT)): hits for path in _outside_the_resolver()
             if (hits := sorted(set(_reaches_in(ast.parse(path.read_text())))))}
    assert found == {}
