"""Units of issue 11: audio meters, token usage, policy pinning and parsing, token labels and
budgets in signed tokens, per-token spending."""

from __future__ import annotations

import pytest

from voxgate.config import ConfigError, split_static_token
from voxgate.policy import apply_policy, parse_policy, rules_for
from voxgate.supervisor.admission import (
    Admission,
    AdmissionConfig,
    Budget,
    mint_token,
    verify_signed,
)
from voxgate.supervisor.sessions import Ledger, empty_usage, exhausted, parse_filters
from voxgate.workers.usage import AudioMeter, Usage, bytes_per_second


@pytest.mark.parametrize("encoding, rate, channels, expected", [
    ("linear16", 16000, 1, 32000.0), ("linear16", "48000", "2", 192000.0), ("mulaw", 8000, 1, 8000.0),
    ("alaw", 8000, None, 8000.0), ("linear32", 16000, 1, 64000.0),
    ("opus", 48000, 1, None), ("mp3", 24000, 1, None), (None, 16000, 1, None), ("linear16", None, 1, None),
    ("linear16", "fast", 1, None), ("linear16", 0, 1, None),
])
def test_bytes_per_second(encoding, rate, channels, expected):
    assert bytes_per_second(encoding, rate, channels) == expected


def test_audio_meter_folds_at_each_declared_rate():
    counted = [0]
    meter = AudioMeter(lambda: counted[0])
    counted[0] = 1000
    assert meter.seconds() is None and meter.bytes() == 1000  # nothing declared yet: bytes only
    meter.set_rate(1000.0)
    counted[0] = 3000
    assert meter.seconds() == 2.0  # bytes before the first declaration are not guessed
    meter.set_rate(500.0)
    counted[0] = 4000
    assert meter.seconds() == 4.0
    meter.set_rate(2000.0, retroactive=True)
    assert meter.seconds() == 2.0  # everything at the rate the protocol's first message declared


def test_usage_sums_every_response_done():
    usage = Usage()
    done = {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
            "input_token_details": {"text_tokens": 15, "audio_tokens": 5, "cached_tokens": 4},
            "output_token_details": {"text_tokens": 3, "audio_tokens": 7}}
    usage.add_response_usage(done)
    usage.add_response_usage(done)
    usage.add_response_usage(None)
    usage.add_response_usage({"input_tokens": "many"})
    assert usage.snapshot()["tokens"] == {"input": 40, "output": 20, "total": 60, "input_text": 30,
                                          "input_audio": 10, "output_text": 6, "output_audio": 14, "cached": 8}


RULES = {"instructions": "Pinned.", "models": ["gpt-realtime"], "tools": ["ok"], "max_output_tokens": 100,
         "voice": "marin"}


def test_apply_policy_replaces_and_names_changed_fields():
    session = {"instructions": "Mine.", "model": "other", "tools": [{"type": "function", "name": "ok"},
                                                                    {"type": "function", "name": "bad"}],
               "max_output_tokens": "inf", "audio": {"output": {"voice": "alloy", "speed": 1.1}}}
    changed = apply_policy(session, RULES)
    assert changed == ["instructions", "model", "tools", "max_output_tokens", "voice"]
    assert session == {"instructions": "Pinned.", "model": "gpt-realtime", "tools": [{"type": "function", "name": "ok"}],
                       "max_output_tokens": 100, "audio": {"output": {"voice": "marin", "speed": 1.1}}}
    # values inside the policy, or left out, are no change the client made
    quiet = {"max_output_tokens": 50, "tools": [{"type": "function", "name": "ok"}]}
    assert apply_policy(quiet, RULES) == []
    assert quiet["max_output_tokens"] == 50 and quiet["instructions"] == "Pinned."
    beta = {"voice": "alloy", "max_response_output_tokens": 4096}
    assert apply_policy(beta, {"voice": "marin", "max_output_tokens": 10}) == ["max_output_tokens", "voice"]
    assert beta == {"voice": "marin", "max_response_output_tokens": 10}


def test_instructions_prefix():
    session = {"instructions": "Be brief."}
    assert apply_policy(session, {"instructions_prefix": "Rules."}) == []
    assert session["instructions"] == "Rules.\n\nBe brief."
    apply_policy(session, {"instructions_prefix": "Rules."})
    assert session["instructions"] == "Rules.\n\nBe brief."  # never twice
    untouched: dict = {}
    apply_policy(untouched, {"instructions_prefix": "Rules."})
    assert untouched == {}  # an update without instructions keeps the pinned ones upstream


def test_rules_for_path_and_label():
    policy = parse_policy('{"paths": {"/openai/v1/realtime": {"voice": "a", "instructions": "x", '
                          '"labels": {"kiosk": {"voice": "b", "instructions_prefix": "p"}}}}}')
    assert rules_for(policy, "realtime", None) == {"voice": "a", "instructions": "x"}
    assert rules_for(policy, "realtime", "kiosk") == {"voice": "b", "instructions": "x"}
    assert rules_for(policy, "translate", "kiosk") is None
    assert rules_for(None, "realtime", None) is None


@pytest.mark.parametrize("text", [
    "[]", "paths: {}\nextra: 1", "paths: {/openai: {tools: []}}", "paths: {/openai: {voice: 3}}",
    "paths: {/openai: {instructions: a, instructions_prefix: b}}", "paths: {/openai: {labels: {'bad label': {}}}}",
    "paths: {/openai: {labels: {k: {labels: {}}}}}", "paths: {/openai: {max_output_tokens: true}}",
])
def test_parse_policy_rejects(text):
    with pytest.raises(ConfigError):
        parse_policy(text)


def test_static_token_labels():
    assert split_static_token("kiosk:s3cret", 0) == ("kiosk", "s3cret")
    assert split_static_token("s3cret", 2) == ("static-3", "s3cret")
    assert split_static_token("bad label:s3cret", 0) == ("static-1", "bad label:s3cret")
    assert split_static_token("kiosk:", 0) == ("static-1", "kiosk:")
    adm = Admission(AdmissionConfig(client_tokens=("kiosk:aaa", "bbb"), static_budget=Budget(max_sessions=2)))
    info = adm.token_info("aaa", None, "openai")
    assert info is not None and info.label == "kiosk" and info.budget.max_sessions == 2
    assert adm.token_info("bbb", None, "openai").label == "static-2"
    assert adm.token_info("kiosk:aaa", None, "openai") is None


def test_minted_budget_and_label_round_trip():
    budget = Budget(max_sessions=2, max_session_seconds=30.5, max_audio_seconds=60, max_tokens=1000)
    token, _ = mint_token("k", ttl=60, label="tab", budget=budget)
    claims = verify_signed("k", token)
    assert Budget.from_claims(claims) == budget
    info = Admission(AdmissionConfig(token_secret="k")).token_info(token, None, "deepgram")
    assert info.label == "tab" and info.budget == budget and info.key.startswith("minted:")
    assert token not in info.key
    assert Budget.from_claims({"ms": -1, "mt": "9", "as": True}) == Budget()


def test_ledger_and_exhausted():
    ledger = Ledger()
    old, new = empty_usage(), empty_usage()
    new["audio_seconds"] = {"up": 1.5, "down": None}
    new["tokens"]["total"] = 40
    spent = ledger.add("k", old, new)
    assert (spent.audio_seconds, spent.tokens) == (1.5, 40)
    assert exhausted(Budget(max_audio_seconds=2), spent) is None
    assert exhausted(Budget(max_audio_seconds=1.5), spent) == "max_audio_seconds"
    assert exhausted(Budget(max_tokens=40), spent) == "max_tokens"
    assert ledger.add("k", new, new).tokens == 40  # the same report twice counts once


def test_parse_filters():
    assert parse_filters([("provider", "openai"), ("client_ip", "1.2.3.4")]) == {"provider": "openai", "client_ip": "1.2.3.4"}
    assert isinstance(parse_filters([("token", "x")]), str)
