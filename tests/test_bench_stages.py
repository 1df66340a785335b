"""The pure parts of the benchmarks: which stage a py-spy sample goes to (bench/stages.py), the
arithmetic that turns shares into µs per request, the targets table, and the inbound credential
every bench sidecar demands. (The measurement itself is `make bench`, never a test.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench import stages
from bench.model import Check, ScenarioResult, informational
from bench.pyspy import Frame, parse
from bench.report import targets
from bench.sidecar import INBOUND_AUTHORIZATION, base_config, static_upstream
from dcr_sidecar import errors
from dcr_sidecar.config import parse_settings
from dcr_sidecar.proxy.inbound import check as check_inbound

LOOP_TOP = ("Runner.run (asyncio/runners.py);BaseEventLoop.run_forever (asyncio/base_events.py);"
            "BaseEventLoop._run_once (asyncio/base_events.py);Handle._run (asyncio/events.py)")
MAIN = "main (dcr_sidecar/cli.py);cmd_serve (dcr_sidecar/cli.py);" + LOOP_TOP
REQUEST = (MAIN + ";RequestHandler._handle_request (aiohttp/web_protocol.py);"
           "Application._handle (aiohttp/web_app.py);InFlight.middleware (dcr_sidecar/app.py);"
           "boundary (dcr_sidecar/proxy/boundary.py)")
OLD = REQUEST + ";_answer (dcr_sidecar/proxy/boundary.py);handler.<locals>.forward " \
                "(dcr_sidecar/proxy/token.py)"
NEW = OLD  # the handler of the new tree calls forward.py from the same place


def stack(text: str) -> list[Frame]:
    ((frames, _),) = parse([f"{text} 1"])
    return frames


def stage(text: str) -> str:
    return stages.stage_of(stack(text))[0]


@pytest.mark.parametrize(("tail", "expected"), [
    # the tree before the redesign (6eb62b1)
    (";read_form (dcr_sidecar/proxy/token.py);read_body (dcr_sidecar/proxy/forms.py)",
     stages.PARSE),
    (";read_form (dcr_sidecar/proxy/token.py);parse_form (dcr_sidecar/proxy/forms.py);"
     "parse_qsl (urllib/parse.py)", stages.PARSE),
    (";check (dcr_sidecar/proxy/inbound.py);Secret.matches (dcr_sidecar/oauth/secret.py)",
     stages.PARSE),
    (";Resolver.credentials (dcr_sidecar/resolver/__init__.py)", stages.PLAN),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "check_secret_destination (dcr_sidecar/provenance.py);"
     "configured_authorities (dcr_sidecar/provenance.py)", stages.PLAN),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "Outbound.request (dcr_sidecar/net.py);Outbound.check_url (dcr_sidecar/net.py);"
     "authority (dcr_sidecar/dial.py)", stages.PLAN),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "outbound_form (dcr_sidecar/proxy/token.py);urlencode (urllib/parse.py)", stages.BUILD),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "auth_parts (dcr_sidecar/oauth/client_auth.py)", stages.BUILD),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "outbound_headers (dcr_sidecar/proxy/token.py)", stages.BUILD),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "Outbound.request (dcr_sidecar/net.py);ClientSession._request (aiohttp/client.py);"
     "_SelectorSocketTransport.write (asyncio/selector_events.py)", stages.SEND),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "Outbound.request (dcr_sidecar/net.py);authority (dcr_sidecar/dial.py)", stages.SEND),
    (";Forwarder.send (dcr_sidecar/forward.py);Outbound.send (dcr_sidecar/net.py);"
     "Slot.acquire (dcr_sidecar/slot.py)", stages.SEND),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "Outbound.request (dcr_sidecar/net.py);read_capped (dcr_sidecar/net.py)", stages.SEND),
    (";handler.<locals>.forward.<locals>.send (dcr_sidecar/proxy/token.py);"
     "Outbound.request (dcr_sidecar/net.py);Metrics.upstream_call (dcr_sidecar/metrics.py);"
     "MetricWrapperBase.labels (prometheus_client/metrics.py)", stages.METRICS),
    (";relay (dcr_sidecar/proxy/token.py);Response.__init__ (aiohttp/web_response.py)",
     stages.RELAY),
    (";second_chance (dcr_sidecar/proxy/token.py);oauth_error (dcr_sidecar/proxy/token.py)",
     stages.RELAY),
    (";grant_type.<locals>.<genexpr> (dcr_sidecar/proxy/token.py)", stages.RELAY),
    ("", stages.HANDLER),
    # the new forwarding module
    (";parse_request (dcr_sidecar/forward.py)", stages.PARSE),
    (";Forwarder.send (dcr_sidecar/forward.py);Forwarder.plan_for (dcr_sidecar/forward.py)",
     stages.PLAN),
    (";Forwarder.send (dcr_sidecar/forward.py);build_form (dcr_sidecar/oauth/forwarding.py)",
     stages.BUILD),
    (";Forwarder.send (dcr_sidecar/forward.py);Forwarder._send_once (dcr_sidecar/forward.py);"
     "Outbound.send (dcr_sidecar/net.py);ClientSession._request (aiohttp/client.py)",
     stages.SEND),
    (";Forwarder.send (dcr_sidecar/forward.py);retry_decision "
     "(dcr_sidecar/oauth/forwarding.py)", stages.RELAY),
    (";relay (dcr_sidecar/forward.py);relayed_headers (dcr_sidecar/oauth/forwarding.py)",
     stages.RELAY),
])
def test_a_sample_goes_to_the_stage_of_its_innermost_named_frame(tail: str,
                                                                 expected: str) -> None:
    assert stage(OLD + tail) == expected


def test_the_boundarys_log_line_and_metrics_are_their_stages_not_the_boundarys() -> None:
    assert stage(REQUEST + ";meth (structlog/_native.py);PrintLogger.msg "
                           "(structlog/_output.py)") == stages.LOG
    assert stage(REQUEST + ";meth (structlog/_native.py);redact "
                           "(dcr_sidecar/observability.py);scrub "
                           "(dcr_sidecar/observability.py)") == stages.LOG
    assert stage(REQUEST + ";_json (dcr_sidecar/observability.py);dumps "
                           "(json/__init__.py)") == stages.LOG
    assert stage(REQUEST + ";Metrics.request (dcr_sidecar/metrics.py)") == stages.METRICS
    assert stage(REQUEST + ";Counter.inc (prometheus_client/metrics.py)") == stages.METRICS
    assert stage(REQUEST + ";request_id_of (dcr_sidecar/proxy/boundary.py)") == stages.PARSE
    assert stage(REQUEST + ";_check_headers.<locals>.<genexpr> "
                           "(dcr_sidecar/proxy/boundary.py)") == stages.PARSE
    assert stage(REQUEST) == stages.BOUNDARY
    assert stage(REQUEST + ";_route_label (dcr_sidecar/proxy/boundary.py)") == stages.BOUNDARY


def test_without_a_sidecar_frame_the_outermost_aiohttp_frame_says_server_or_client() -> None:
    assert stage(LOOP_TOP + ";_SelectorSocketTransport._read_ready "
                            "(asyncio/selector_events.py);_ClientDeadlines.data_received "
                            "(dcr_sidecar/listeners.py);RequestHandler.data_received "
                            "(aiohttp/web_protocol.py);HttpRequestParser.feed_data "
                            "(aiohttp/http_parser.py)") == stages.SERVER
    assert stage(MAIN + ";RequestHandler.finish_response (aiohttp/web_protocol.py);"
                        "StreamWriter.write_eof (aiohttp/http_writer.py);"
                        "_SelectorSocketTransport.write (asyncio/selector_events.py)"
                 ) == stages.SERVER
    assert stage(LOOP_TOP + ";ResponseHandler.data_received (aiohttp/client_proto.py);"
                            "StreamReader.feed_data (aiohttp/streams.py)") == stages.SEND
    assert stage(LOOP_TOP + ";ClientRequest.write_bytes (aiohttp/client_reqrep.py);"
                            "StreamWriter.write (aiohttp/http_writer.py)") == stages.SEND
    assert stage(MAIN) == stages.LOOP  # the loop's own frames under cli.main
    assert stage(LOOP_TOP + ";BaseEventLoop.call_soon (asyncio/base_events.py)") == stages.LOOP


def test_an_unnamed_sidecar_function_is_shown_not_dropped() -> None:
    frames = stack(REQUEST + ";something_new (dcr_sidecar/brand_new.py);dumps "
                             "(json/__init__.py)")
    assert stages.stage_of(frames) == (stages.OTHER_SIDECAR, "something_new (brand_new.py)")
    split = stages.attribute([(frames, 7), (stack(OLD), 3)])
    assert split.counts == {stages.HANDLER: 3, stages.OTHER_SIDECAR: 7}
    assert split.unnamed == {"something_new (brand_new.py)": 7}


def test_full_paths_and_a_materialized_tree_are_read_like_pythons_own() -> None:
    full = ("/srv/trees/before/dcr_sidecar/proxy/token.py", "/usr/lib/python3.11/"
            "asyncio/events.py", "/w/.venv/lib/python3.11/site-packages/structlog/_base.py")
    assert stages.sidecar_file(full[0]) == "proxy/token.py"
    assert stages.sidecar_file("/x/not_dcr_sidecar/a.py") is None
    assert stages.library_file(full[1]) == "asyncio/events.py"
    assert stages.library_file(full[2]) == "structlog/_base.py"
    assert stage(f"Handle._run ({full[1]});read_form ({full[0]})") == stages.PARSE


def test_idle_waits_are_not_samples() -> None:
    idle = [(stack(LOOP_TOP + ";EpollSelector.select (selectors.py)"), 50),
            (stack("Thread._bootstrap (threading.py);_worker "
                   "(concurrent/futures/thread.py)"), 40),
            (stack(OLD), 10)]
    split = stages.attribute(idle)
    assert split.samples == 10
    assert split.share(stages.HANDLER) == 1.0


def test_micros_adds_up_to_the_measured_total_exactly() -> None:
    split = stages.Split({stages.PARSE: 1, stages.SEND: 1, stages.LOG: 1})
    us = stages.micros(split, 100.0)
    assert set(us) == set(stages.STAGES)
    assert round(sum(us.values()), 1) == 100.0
    assert sorted(us[s] for s in (stages.PARSE, stages.SEND, stages.LOG)) == [33.3, 33.3, 33.4]
    assert us[stages.METRICS] == 0.0
    skewed = stages.Split({stages.SEND: 997, stages.LOG: 2, stages.PARSE: 1})
    us = stages.micros(skewed, 391.27)
    assert round(sum(us.values()), 1) == 391.3
    assert us[stages.SEND] == pytest.approx(391.27 * 997 / 1000, abs=0.1)
    assert stages.micros(stages.Split(), 50.0) == dict.fromkeys(stages.STAGES, 0.0)


def test_the_table_has_a_row_per_stage_the_totals_and_the_change() -> None:
    before = stages.Column("before", stages.Split({stages.SEND: 3, stages.LOG: 1}), 400.0, 2500)
    after = stages.Column("after", stages.Split({stages.SEND: 1, stages.LOG: 1}), 200.0, 5000)
    header, rows = stages.table_rows([before, after])
    assert header[0] == "stage"
    assert len(header) == 4
    by_stage = {row[0]: row for row in rows}
    assert [row[0] for row in rows[:len(stages.STAGES)]] == list(stages.STAGES)
    assert by_stage[stages.SEND][1:] == ["300.0 (75.0 %)", "100.0 (50.0 %)", "\u2212200.0"]
    assert by_stage[stages.LOG][1:] == ["100.0 (25.0 %)", "100.0 (50.0 %)", "+0.0"]
    assert by_stage["total = measured CPU µs/request"][1:] == ["400.0", "200.0", "\u2212200.0"]
    header, rows = stages.table_rows([after])
    assert len(header) == 2
    text = stages.format_table(header, rows)
    assert text.splitlines()[0].startswith("stage")
    assert "200.0" in text


def test_informational_checks_stay_out_of_the_list_of_targets() -> None:
    target = Check("p99 ≤ 3 ms at 1,000 req/s", "2.10 ms", True, "0.90 ms under the bound")
    extra = informational(Check("on uvloop: p99 ≤ 3 ms", "3.5 ms", False, "over"))
    result = ScenarioResult("paced", "Latency at a fixed rate", checks=[target, extra])
    listed = "\n".join(targets([result]))
    assert "p99 ≤ 3 ms at 1,000 req/s" in listed
    assert "uvloop" not in listed
    assert "uvloop" in "\n".join(targets([result], info=True))
    again = ScenarioResult.from_dict(result.as_dict())
    assert [c.informational for c in again.checks] == [False, True]


def test_a_failed_scenario_still_has_a_row_in_the_targets() -> None:
    failed = ScenarioResult("storm", "Registration storm", skipped="failed: WrkFailed: a | b\nx")
    listed = "\n".join(targets([failed]))
    row = next(line for line in listed.splitlines() if line.startswith("| its targets |"))
    assert row.endswith("| ⏸ not measured | failed: WrkFailed: a \\| b | Registration storm |")
    assert "Registration storm" not in "\n".join(targets([failed], info=True))


def test_bench_sidecars_demand_inbound_credentials_and_the_bench_sends_them(
        tmp_path: Path) -> None:
    """All features on: the product's own inbound check accepts what wrk sends, and refuses a
    request without it (so a sidecar that did not check would not be what is measured)."""
    config = base_config(tmp_path, "x", [static_upstream("bench", "http://127.0.0.1:9")])
    settings = parse_settings(yaml.safe_dump(config), "bench.yaml")
    assert settings.inbound.client_secret is not None
    form = [("grant_type", "client_credentials")]
    check_inbound(settings.inbound, {"Authorization": INBOUND_AUTHORIZATION}, form)
    with pytest.raises(errors.InboundUnauthorized):
        check_inbound(settings.inbound, {}, form)
