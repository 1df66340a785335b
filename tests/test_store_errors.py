"""The one map from store errors to HTTP errors (store/errors.py, design.md §3.7): each kind of
store failure becomes a 503 with Retry-After naming its step, and the backends raise nothing
but store errors (a file system failure, a Redis outage, a malformed flow record)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcr_sidecar import errors
from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store import errors as store_errors
from dcr_sidecar.store.file import FileStore
from dcr_sidecar.store.flows import BoundedFlowStore
from dcr_sidecar.store.records import Record, RecordKey
from dcr_sidecar.store.redis import RedisStore, flow_cache
from tests.conftest import RedisFactory

KEY = RecordKey("https://as.example", "acme")
RECORD = FlowRecord("https://app/cb", "s", None, 1, upstream="acme", issuer="https://as.example")


@pytest.mark.parametrize(
    ("raised", "answer", "step", "retry_after", "counted"),
    [
        (store_errors.LeaseLost("refused"), errors.LeaseLost, "lease", "1", False),
        (store_errors.LeaseTimeout("busy", waited=2.0), errors.StoreUnavailable, "lease", "1",
         False),
        (store_errors.StoreUnreachable("redis down"), errors.StoreUnavailable, "store_read", "5",
         True),
        (store_errors.StoreCorrupt("bad json"), errors.StoreUnavailable, "store_read", "5", True),
        (store_errors.StoreUnsafe("o+w dir"), errors.StoreUnavailable, "store_read", "5", True),
        (store_errors.KeyMismatch("wrong keys"), errors.StoreUnavailable, "store_read", "5",
         True),
    ],
)
def test_each_store_error_becomes_a_503_with_retry_after(
        raised: store_errors.StoreError, answer: type[errors.StoreUnavailable], step: str,
        retry_after: str, counted: bool) -> None:
    seen: list[str] = []
    with pytest.raises(errors.StoreUnavailable) as caught, store_errors.map_store_errors(
            "store_read", upstream="acme", count=seen.append):
        raise raised
    exc = caught.value
    assert type(exc) is answer
    assert exc.__cause__ is raised
    assert (exc.status, exc.error) == (503, "temporarily_unavailable")
    assert (exc.step, exc.upstream) == (step, "acme")
    assert exc.headers() == {"Retry-After": retry_after}
    assert str(raised) in exc.description
    assert seen == (["store_read"] if counted else [])


def test_sidecar_errors_and_foreign_errors_pass_through_unmapped() -> None:
    with pytest.raises(errors.Conflict), store_errors.map_store_errors("store_write"):
        raise errors.Conflict("busy")
    with pytest.raises(KeyError), store_errors.map_store_errors("store_write"):
        raise KeyError("a bug, not a store failure")


def test_about_names_what_was_stored() -> None:
    with pytest.raises(errors.StoreUnavailable, match=r"failed \(store_write\) for the CIMD"), \
            store_errors.map_store_errors("store_write", about=" for the CIMD keys"):
        raise store_errors.StoreUnreachable("down")


async def test_file_store_raises_only_store_errors(tmp_path: Path) -> None:
    """A file in the way of the store's directory: an OSError inside, StoreUnreachable out."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = FileStore(str(blocker / "credentials.json"))
    with pytest.raises(store_errors.StoreUnreachable, match="not-a-dir"):
        await store.get(KEY)
    with pytest.raises(store_errors.StoreUnreachable):
        await store.put(Record(KEY))
    with pytest.raises(store_errors.StoreUnreachable):
        async with store.lock(KEY):
            pass


async def test_redis_flow_store_failures_leave_the_budget_as_503s(
        redis_server: RedisFactory) -> None:
    """The Redis flow cache raises store errors; the bounded store in front of every flow
    store answers them by the one map (malformed records, then Redis down)."""
    server = await redis_server()
    store = RedisStore(Secret(server.url))
    flows = flow_cache(store)
    bounded = BoundedFlowStore(flows)
    bad = flows.backend_key("state:bad")
    try:
        await store.client.set(bad, json.dumps(["not", "a", "record"]), px=60_000)
        with pytest.raises(store_errors.StoreCorrupt):
            await flows.take("state:bad")
        await store.client.set(bad, b"\xff not UTF-8", px=60_000)
        with pytest.raises(store_errors.StoreCorrupt):
            await flows.take("state:bad")
        await store.client.set(bad, json.dumps({"unknown_field": 1}), px=60_000)
        with pytest.raises(errors.StoreUnavailable) as caught:
            await bounded.take("state:bad")
        assert caught.value.step == "store_read"
        await server.stop()
        with pytest.raises(errors.StoreUnavailable) as caught:
            await bounded.put("state:a", RECORD)
        assert (caught.value.step, caught.value.retry_after) == ("store_write", 5)
        assert len(bounded) == 0  # a refused write admits nothing
    finally:
        await store.close()
