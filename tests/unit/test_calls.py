"""Pure helpers of the WebRTC call set-up (voxgate/workers/openai/calls.py)."""

from __future__ import annotations

import orjson
import pytest

from tests.support.webrtc import OFFER
from voxgate.simulate.openai.calls import sdp_answer
from voxgate.workers.openai.calls import (
    OfferError,
    build_form,
    calls_url,
    parse_offer,
    parse_request,
    sdp_problem,
    session_config,
)


def test_multipart_round_trip_keeps_sdp_and_session_exact():
    session = {"type": "realtime", "instructions": "naïve \"quotes\"\r\n--boundary-like--"}
    ctype, body = build_form([("sdp", "application/sdp", OFFER.encode()),
                              ("session", "application/json", orjson.dumps(session))])
    offer = parse_offer(ctype, body)
    assert offer.sdp == OFFER and offer.session == session


@pytest.mark.parametrize(
    ("ctype", "body", "status", "code"),
    [
        ("application/json", b"{}", 415, "unsupported_media_type"),
        (None, b"v=0", 415, "unsupported_media_type"),
        ("application/sdp", b"\xff\xfe", 400, "invalid_offer"),
        ("multipart/form-data; boundary=x", b"--x--\r\n", 400, "invalid_form"),
    ],
)
def test_offers_refused(ctype, body, status, code):
    with pytest.raises(OfferError) as err:
        parse_offer(ctype, body)
    assert (err.value.status, err.value.code) == (status, code)


def test_session_field_must_be_a_json_object():
    for value, code in ((b"[1]", "invalid_type"), (b"{", "invalid_json")):
        ctype, body = build_form([("sdp", "application/sdp", OFFER.encode()),
                                  ("session", "application/json", value)])
        with pytest.raises(OfferError) as err:
            parse_offer(ctype, body)
        assert err.value.code == code


@pytest.mark.parametrize(
    ("sdp", "problem"),
    [
        ("", "it is empty"),
        ("o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\n", "it must start with v=0"),
        ("v=0\r\nnot a line\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "every line must be <type>=<value>"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "it has no audio media section"),
        ("v=0\n" + "a=x\n" * 20000 + "m=audio 9 X 0\n", "it is too large"),
    ],
)
def test_sdp_problems(sdp, problem):
    assert sdp_problem(sdp) == problem


def test_simulated_answer_mirrors_the_offer_media():
    answer = sdp_answer(OFFER)
    assert sdp_problem(answer) is None
    lines = answer.split("\r\n")
    assert [x.split()[0] for x in lines if x.startswith("m=")] == ["m=audio", "m=application"]
    assert [x for x in lines if x.startswith("a=mid:")] == ["a=mid:0", "a=mid:1"]
    assert "a=group:BUNDLE 0 1" in lines and "a=setup:active" in lines


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://api.openai.com/v1/realtime", ("api.openai.com", "api.openai.com", 443, True, "/v1/realtime/calls")),
        ("ws://127.0.0.1:8123/v1/realtime/", ("127.0.0.1", "127.0.0.1:8123", 8123, False, "/v1/realtime/calls")),
        ("https://proxy.example:8443/openai/v1/realtime", ("proxy.example", "proxy.example:8443", 8443, True,
                                                           "/openai/v1/realtime/calls")),
    ],
)
def test_calls_url_beside_the_realtime_url(url, expected):
    assert calls_url(url) == expected


def test_session_model_precedence():
    query = [("model", "gpt-realtime-mini"), ("token", "t")]
    assert session_config(None, [], "gpt-realtime") == {"type": "realtime", "model": "gpt-realtime"}
    assert session_config(None, query, "gpt-realtime")["model"] == "gpt-realtime-mini"
    mine = session_config({"type": "transcription", "model": "gpt-realtime-x"}, query, "d")
    assert mine == {"type": "realtime", "model": "gpt-realtime-x"}


def test_parse_request_chunked_body():
    raw = (b"POST /openai/v1/realtime/calls?model=m HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n3\r\nv=0\r\n0\r\n\r\n")
    request = parse_request(raw)
    assert request.body == b"v=0" and request.query == [("model", "m")]
    assert request.header("content-type") == "application/sdp"
