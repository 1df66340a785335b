"""The warm path by stage: how many µs of CPU per request each stage of a proxied token request
costs, from py-spy samples and the measured CPU per request (issue 12).

    python -m bench.stages [--seconds 5] [--repeats 3] [--profile-seconds 5] TREE [TREE ...]

TREE as in :mod:`bench.ab`: ``NAME=DIR`` or ``NAME=git:REV`` (or just ``DIR`` / ``git:REV``,
named by itself); e.g. ``before=git:6eb62b1 after=.``. Each tree's sidecar runs the warm-hop
configuration (static client, nginx stub, JSON log at info, metrics, inbound Basic) beside the
DIY forwarder; the table is printed.

Method. wrk loads each sidecar, interleaved, and the process's CPU time per request is
measured (median over the repeats). Separately, py-spy samples the same process under the same
load; only running threads are sampled. Each sample goes to one stage (:func:`stage_of`):

1. the innermost frame, walking from the leaf outwards, that :data:`RULES` names decides — a
   dcr_sidecar function by module and name, or a library that is a stage by itself (structlog
   is the log line, prometheus_client the metrics). Library code called from a sidecar function
   (aiohttp's client under ``Outbound.request``, ``json.dumps`` under the log renderer) counts
   for that function's stage. A dcr_sidecar frame that no rule names lands in
   :data:`OTHER_SIDECAR` (never dropped; the report lists the functions);
2. a sample with no such frame is aiohttp's or the event loop's own work: the outermost aiohttp
   frame says whether it is the server (HTTP parse, routing, writing the answer) or the client
   (reading the AS's answer: the send), anything else is the event loop.

µs per stage = the stage's share of the samples × the measured CPU µs per request, rounded so
that the rows add up to the total exactly (:func:`micros`). The rules cover the tree before the
redesign (proxy/token.py, net.py, boundary.py, ...) and the new forwarding module (forward.py,
oauth/forwarding.py).

This module is pure (rules, attribution, arithmetic); the measurement is in
:mod:`bench.scenarios.stages`.
"""

from __future__ import annotations

import collections
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.pyspy import Frame, is_idle

PARSE = "parse"
PLAN = "plan lookup"
BUILD = "build"
SEND = "send"
RELAY = "relay"
LOG = "log"
METRICS = "metrics"
BOUNDARY = "request boundary (middleware)"
HANDLER = "handler (glue between the stages)"
OTHER_SIDECAR = "other sidecar code"
SERVER = "aiohttp server (HTTP parse, routing, write)"
LOOP = "event loop / other"
SKIP = ""  # a frame that never decides: the caller (or the fallback) does

# Row order of the table: the stages, then what is not a stage of the sidecar's own.
STAGES = (PARSE, PLAN, BUILD, SEND, RELAY, LOG, METRICS, BOUNDARY, HANDLER, OTHER_SIDECAR,
          SERVER, LOOP)

# What each stage covers (for the report).
MEANING: Mapping[str, str] = {
    PARSE: "read and parse the app's request: body, form, inbound credential check, header "
           "limits, request id",
    PLAN: "find the upstream and its credentials and the per-generation facts (URL, provenance "
          "and address verdicts): a dict lookup once planned, checks redone per request before",
    BUILD: "the outbound form and headers, the client authentication",
    SEND: "the outbound request: slot, timeouts, aiohttp client (write, read the answer), "
          "capped read",
    RELAY: "the answer to the app, the retry decision, bookkeeping after the answer",
    LOG: "the canonical log line (structlog, redaction, JSON, write)",
    METRICS: "Prometheus counters and histograms",
    BOUNDARY: "the error boundary and in-flight middleware themselves",
    HANDLER: "the handler's own frames between the stages",
    OTHER_SIDECAR: "dcr_sidecar functions no rule names (listed under the table)",
    SERVER: "aiohttp's server outside the handler: HTTP parse, routing, writing the answer "
            "(with the listener's client-deadline wrapper around its protocol)",
    LOOP: "the event loop itself, other threads",
}

# (file under dcr_sidecar/, function qualname) globs → stage; first match wins. Qualnames are
# py-spy's (``Outbound.request``, ``handler.<locals>.forward``); a trailing * takes in the
# function's nested functions and generator expressions (``grant_type.<locals>.<genexpr>``).
SIDECAR_RULES: tuple[tuple[str, str, str], ...] = (
    # outside any request: the frames that run the loop
    ("cli.py", "*", SKIP),
    ("__main__.py", "*", SKIP),
    # the listener's client deadlines wrap aiohttp's server protocol: the server decides
    ("listeners.py", "*", SKIP),
    # helpers whose caller says what they are for
    ("dial.py", "authority*", SKIP),
    ("dial.py", "authority_text*", SKIP),
    ("oauth/text.py", "*", SKIP),
    ("clock.py", "*", SKIP),
    # -- the forwarding module (issue 12)
    ("forward.py", "*parse*", PARSE),
    ("forward.py", "*read*", PARSE),
    ("forward.py", "*plan*", PLAN),
    ("forward.py", "*lookup*", PLAN),
    ("forward.py", "Plan.*", PLAN),
    ("forward.py", "*build*", BUILD),
    ("forward.py", "*relay*", RELAY),
    ("forward.py", "*retry*", RELAY),
    ("forward.py", "*send*", SEND),
    ("forward.py", "*handler*", HANDLER),
    ("forward.py", "*forward*", HANDLER),
    ("oauth/forwarding.py", "build*", BUILD),
    ("oauth/forwarding.py", "encode*", BUILD),
    ("oauth/forwarding.py", "*", RELAY),  # relayed_headers, oauth_error, retry_decision ...
    # -- parse
    ("proxy/token.py", "read_form*", PARSE),
    ("proxy/forms.py", "*", PARSE),
    ("proxy/inbound.py", "*", PARSE),
    ("oauth/client_auth.py", "parse_basic*", PARSE),
    ("oauth/secret.py", "*", PARSE),
    ("proxy/boundary.py", "_check_headers*", PARSE),
    ("proxy/boundary.py", "request_id_of*", PARSE),
    ("proxy/boundary.py", "_RequestIds.*", PARSE),
    # -- plan lookup
    ("proxy/runtime.py", "*", PLAN),
    ("config.py", "*", PLAN),
    ("resolver/*", "*.served*", RELAY),
    ("resolver/*", "*", PLAN),
    ("provenance.py", "*", PLAN),
    ("oauth/metadata.py", "*", PLAN),
    ("net.py", "Outbound.check_url*", PLAN),
    ("net.py", "Outbound._check_url*", PLAN),
    ("net.py", "_literal_refusal*", PLAN),
    # -- build
    ("proxy/token.py", "outbound_*", BUILD),
    ("proxy/token.py", "adjusted*", BUILD),
    ("oauth/client_auth.py", "*", BUILD),
    ("oauth/resource.py", "*", BUILD),
    ("oauth/resource_indicator.py", "*", BUILD),
    ("oauth/jose.py", "*", BUILD),
    ("client_keys.py", "*", BUILD),
    # -- send
    ("proxy/token.py", "*.send*", SEND),
    ("net.py", "*", SEND),
    ("slot.py", "*", SEND),
    ("dial.py", "*", SEND),
    ("tls.py", "*", SEND),
    # -- relay
    ("proxy/token.py", "relay*", RELAY),
    ("proxy/token.py", "second_chance*", RELAY),
    ("proxy/token.py", "accepted*", RELAY),
    ("proxy/token.py", "oauth_error*", RELAY),
    ("proxy/token.py", "grant_type*", RELAY),
    # -- log, metrics
    ("observability.py", "*", LOG),
    ("metrics.py", "*", METRICS),
    # -- the request's frame
    ("proxy/boundary.py", "*", BOUNDARY),
    ("app.py", "InFlight.*", BOUNDARY),
    ("proxy/token.py", "handler*", HANDLER),
)

# Libraries that are a stage wherever they are called from (matched on the path after
# site-packages/ or lib/pythonX.Y/).
LIBRARY_STAGES: tuple[tuple[str, str], ...] = (
    ("structlog/", LOG),
    ("logging/", LOG),
    ("prometheus_client/", METRICS),
)

_SIDECAR_DIR = "dcr_sidecar/"
_LIBRARY = re.compile(r"(?:site-packages|dist-packages|lib/python3\.\d+)/(?P<rest>(?:(?!"
                      r"site-packages/|dist-packages/).)*)$")


def sidecar_file(path: str) -> str | None:
    """`path` under dcr_sidecar/ (``proxy/token.py``), or None for any other file."""
    at = path.rfind(_SIDECAR_DIR)
    if at < 0 or (at > 0 and path[at - 1] not in "/\\"):
        return None
    return path[at + len(_SIDECAR_DIR):]


def library_file(path: str) -> str | None:
    """`path` under site-packages or the standard library (``aiohttp/web_protocol.py``).
    py-spy already writes most paths so (relative to their sys.path entry); full ones are cut
    the same way."""
    match = _LIBRARY.search(path)
    if match is not None:
        return match.group("rest")
    return path if path and not path.startswith(("/", "<")) else None


def frame_stage(frame: Frame) -> str | None:
    """The stage `frame` decides, SKIP for a frame that never does, None when it is no rule's
    (library code that counts for its caller, or an unnamed sidecar function: see stage_of)."""
    where = sidecar_file(frame.path)
    if where is not None:
        for file_glob, func_glob, stage in SIDECAR_RULES:
            if fnmatch.fnmatchcase(where, file_glob) and fnmatch.fnmatchcase(frame.func,
                                                                            func_glob):
                return stage
        return None
    library = library_file(frame.path)
    if library is not None:
        for prefix, stage in LIBRARY_STAGES:
            if library.startswith(prefix):
                return stage
    return None


def _aiohttp_side(library: str) -> str | None:
    name = library.removeprefix("aiohttp/")
    if name.startswith(("web", "http_parser", "http_writer")):
        return SERVER
    if name.startswith(("client", "connector")):
        return SEND
    return None


def stage_of(stack: Sequence[Frame]) -> tuple[str, str | None]:
    """(stage, the unnamed sidecar function that decided it, if any) for one sample; `stack`
    runs from the outermost frame to the leaf, as py-spy writes it."""
    for frame in reversed(stack):
        stage = frame_stage(frame)
        if stage:
            return stage, None
        if stage is None and sidecar_file(frame.path) is not None:
            return OTHER_SIDECAR, f"{frame.func} ({sidecar_file(frame.path)})"
    for frame in stack:  # outermost first: whose callback is this?
        library = library_file(frame.path)
        if library is not None and library.startswith("aiohttp/"):
            side = _aiohttp_side(library)
            if side is not None:
                return side, None
    return LOOP, None


@dataclass
class Split:
    """Samples per stage of one process."""

    counts: dict[str, int] = field(default_factory=dict)
    unnamed: dict[str, int] = field(default_factory=dict)  # sidecar functions in OTHER_SIDECAR

    @property
    def samples(self) -> int:
        return sum(self.counts.values())

    def share(self, stage: str) -> float:
        return self.counts.get(stage, 0) / max(1, self.samples)


def attribute(stacks: Iterable[tuple[list[Frame], int]]) -> Split:
    """Every busy sample to one stage (idle epoll waits, should any be sampled, are left out)."""
    counts: collections.Counter[str] = collections.Counter()
    unnamed: collections.Counter[str] = collections.Counter()
    for stack, count in stacks:
        if not stack or is_idle(stack):
            continue
        stage, function = stage_of(stack)
        counts[stage] += count
        if function is not None:
            unnamed[function] += count
    return Split({s: counts[s] for s in STAGES if counts[s]}, dict(unnamed.most_common()))


def micros(split: Split, cpu_us: float, decimals: int = 1) -> dict[str, float]:
    """µs per request per stage: share × `cpu_us`, rounded to `decimals` by largest remainder
    so that the rows add up to round(cpu_us, decimals) exactly. Every stage of STAGES is a key."""
    unit = 10 ** decimals
    total = round(cpu_us * unit)
    if split.samples == 0:
        return dict.fromkeys(STAGES, 0.0)
    exact = {s: split.counts.get(s, 0) * total / split.samples for s in STAGES}
    units = {s: int(v) for s, v in exact.items()}
    left = total - sum(units.values())
    for s in sorted(STAGES, key=lambda s: (units[s] - exact[s], STAGES.index(s)))[:left]:
        units[s] += 1
    return {s: units[s] / unit for s in STAGES}


@dataclass(frozen=True)
class Column:
    """One process in the table: its samples and its measured CPU µs per request."""

    name: str
    split: Split
    cpu_us: float
    rps: float


def signed(value: float) -> str:
    """+1.0 / −1.0 (a typographic minus, as elsewhere in the report)."""
    return f"{value:+.1f}".replace("-", "−")


def table_rows(columns: Sequence[Column]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per stage (µs and share per column, the change from the first
    column to the last when there are two or more), then the totals."""
    header = ["stage", *(f"{c.name}: µs/request (share)" for c in columns)]
    delta = len(columns) >= 2
    if delta:
        header.append(f"{columns[-1].name} − {columns[0].name}, µs")
    values = [micros(c.split, c.cpu_us) for c in columns]
    rows = []
    for stage in STAGES:
        row = [stage, *(f"{v[stage]:.1f} ({c.split.share(stage) * 100:.1f} %)"
                        for c, v in zip(columns, values, strict=True))]
        if delta:
            row.append(signed(values[-1][stage] - values[0][stage]))
        rows.append(row)
    total = ["total = measured CPU µs/request", *(f"{c.cpu_us:.1f}" for c in columns)]
    rps = ["req/s (same runs)", *(f"{c.rps:.0f}" for c in columns)]
    samples = ["py-spy samples", *(f"{c.split.samples:,}" for c in columns)]
    if delta:
        total.append(signed(columns[-1].cpu_us - columns[0].cpu_us))
        rps.append("")
        samples.append("")
    return header, [*rows, total, rps, samples]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table for the terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    from bench.scenarios.stages import main as run_main  # the measurement (processes, wrk)

    return run_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
