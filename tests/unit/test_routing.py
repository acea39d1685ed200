"""The route table is the one answer to "which path goes where": the router, the workers'
handlers and the PROXY_PATH check all follow it, so a row added there cannot half-exist."""

from __future__ import annotations

import pytest

from tests.support.gateway import base_env, run_cli
from voxgate.config import DEEPGRAM, OPENAI
from voxgate.routes import RESERVED_PATHS, ROUTE_TABLE, SUPERVISOR_PATHS, Route, kinds
from voxgate.supervisor.routing import Router


def test_every_route_kind_has_a_handler_in_its_worker():
    from voxgate.workers.deepgram.routes import HANDLERS as DEEPGRAM_HANDLERS
    from voxgate.workers.openai.routes import HANDLERS as OPENAI_HANDLERS

    assert set(kinds(OPENAI)) == set(OPENAI_HANDLERS)
    assert set(kinds(DEEPGRAM)) == set(DEEPGRAM_HANDLERS)


@pytest.mark.parametrize("proxy_path", ["/deepgram-proxy", "/dg", "/a/b"])
def test_the_router_serves_every_row_of_the_table(proxy_path):
    router = Router(proxy_path)
    for entry in ROUTE_TABLE:
        path = entry.full_path(proxy_path)
        if entry.websocket:
            assert router.websocket_route(path, []) == entry.route, path
            assert router.http_route("POST", path) is None, path
        else:
            assert router.http_route("POST", path) == entry.route, path
            assert router.http_route("GET", path) is None, path
            assert router.websocket_route(path, []) is None, path
    assert router.websocket_route(proxy_path, [("service", "transcription")]) == Route(DEEPGRAM, "listen")
    assert router.websocket_route("/nowhere", []) is None
    assert {path for path, _, _ in router.endpoints()} <= {e.full_path(proxy_path) for e in ROUTE_TABLE}


def test_readiness_names_each_providers_first_path():
    router = Router("/dg")
    assert router.provider_path(OPENAI) == "/openai"
    assert router.provider_path(DEEPGRAM) == "/dg"


def test_reserved_paths_cover_openai_and_every_supervisor_endpoint():
    assert set(SUPERVISOR_PATHS) <= set(RESERVED_PATHS)
    assert {e.path for e in ROUTE_TABLE if e.route.provider == OPENAI} <= set(RESERVED_PATHS)


@pytest.mark.parametrize("proxy_path", ["/openai/v1", "/v1/usage", "/readyz/x", "/v1/realtime"])
def test_a_proxy_path_that_would_shadow_a_gateway_path_is_one_line_exit_2(proxy_path):
    result = run_cli("check", "--proxy-path", proxy_path, env=base_env(DEEPGRAM_API_KEY="dg-test-key"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "would shadow the gateway route" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "dg-test-key" not in result.stderr + result.stdout
