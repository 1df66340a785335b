"""Memory one callback-flow record holds in process (store/flows.py RECORD_OVERHEAD):
``python -m bench.flow_record_memory``. Puts N records through the in-memory flow store behind
its budget, as /authorize does, and prints tracemalloc's growth per record beside the part
``record_cost`` counts for their strings. Bounded: N records, one process, no network."""

from __future__ import annotations

import asyncio
import gc
import secrets
import tracemalloc

from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.store.flows import RECORD_OVERHEAD, BoundedFlowStore, FlowCache, record_cost

N = 20_000


def record(n: int) -> tuple[str, FlowRecord]:
    key = f"state:{secrets.token_urlsafe(32)}"
    return key, FlowRecord("https://app.example/cb", f"app-state-{n:08d}",
                           secrets.token_urlsafe(48), 1, upstream="acme",
                           issuer="https://as.example", client=f"127.0.0.{n % 200 + 2}")


async def measure() -> tuple[float, float]:
    """Bytes held per record (everything a request made for it and the store kept), and the
    characters record_cost counts for it."""
    store = BoundedFlowStore(FlowCache.in_memory(), max_entries=N, max_bytes=1 << 40,
                             per_client=0)
    characters = 0
    await store.put("warm-up", record(0)[1])  # the backend and its imports, made on first use
    await store.take("warm-up")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(N):
        key, rec = record(n)
        characters += record_cost(key, rec) - RECORD_OVERHEAD
        await store.put(key, rec)
    del key, rec
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return grown / N, characters / N


def main() -> None:
    per_record, characters = asyncio.run(measure())
    print(f"{N} records: {per_record:.0f} B held per record; record_cost counts "
          f"{characters:.0f} B of characters + RECORD_OVERHEAD {RECORD_OVERHEAD} B "
          f"= {characters + RECORD_OVERHEAD:.0f} B (overhead that would match: "
          f"{per_record - characters:.0f} B)")


if __name__ == "__main__":
    main()
