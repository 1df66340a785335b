"""Reading py-spy's raw (collapsed) stacks: self and inclusive time per function, and a
breakdown by layer. Pure functions over text, so they can be checked without a profiler.

A raw line is ``frame;frame;...;leaf COUNT`` with frames ``function (path)`` (``--nolineno``).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from dataclasses import dataclass

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*)\)$")

# First match wins: which layer a leaf frame belongs to.
LAYERS: tuple[tuple[str, str], ...] = (
    ("dcr_sidecar/", "dcr-sidecar code"),
    ("bench/forwarder", "forwarder code"),
    ("structlog/", "structlog (log line)"),
    ("aiohttp/web", "aiohttp server"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/", "aiohttp (shared)"),
    ("multidict/", "multidict / yarl"),
    ("yarl/", "multidict / yarl"),
    ("asyncio/", "asyncio event loop"),
    ("uvloop/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("json/", "stdlib json"),
    ("urllib/", "stdlib urllib"),
    ("ipaddress.py", "stdlib ipaddress"),
    ("uuid.py", "stdlib uuid"),
    ("re/", "stdlib re"),
    ("logging/", "stdlib logging"),
)


@dataclass(frozen=True)
class Frame:
    func: str
    path: str

    @property
    def short(self) -> str:
        path = self.path
        for marker in ("site-packages/", "lib/python3.11/", "/wt-8/", "/work/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{self.func} ({path})"

    @property
    def layer(self) -> str:
        return layer_of(self.path)


def layer_of(path: str) -> str:
    for marker, name in LAYERS:
        if marker in path:
            return name
    return "other"


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "")
    return Frame(match.group("func"), match.group("path"))


def parse(lines: Iterable[str]) -> list[tuple[list[Frame], int]]:
    stacks = []
    for raw in lines:
        line = raw.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append(([parse_frame(f) for f in stack.split(";")], int(count)))
    return stacks


def is_idle(stack: list[Frame]) -> bool:
    """A waiting thread: the loop in epoll/select, or a thread-pool worker waiting for work
    (its own frame is the leaf: it is blocked in the queue's get). py-spy samples these with
    ``--idle``, and without it now and then (its running/waiting test races the thread)."""
    leaf = stack[-1]
    if leaf.func.endswith(("select", "poll")) and "selectors" in leaf.path:
        return True
    return leaf.func == "_worker" and leaf.path.endswith("concurrent/futures/thread.py")


@dataclass
class Profile:
    total: int
    idle: int
    self_time: list[tuple[str, int]]
    inclusive: list[tuple[str, int]]
    layers: list[tuple[str, int]]

    def share(self, count: int) -> float:
        """Share of the busy samples."""
        return count / max(1, self.total - self.idle)


def summarize(stacks: list[tuple[list[Frame], int]], top: int = 25) -> Profile:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for stack, count in stacks:
        total += count
        if is_idle(stack):
            idle += count
            continue
        own[stack[-1].short] += count
        layers[stack[-1].layer] += count
        for name in {f.short for f in stack}:
            inclusive[name] += count
    return Profile(total, idle, own.most_common(top), inclusive.most_common(),
                   layers.most_common())
