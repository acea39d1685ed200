"""Admission decisions without sockets: token sources, signed tokens, buckets, caps."""

from __future__ import annotations

from voxgate.supervisor.admission import (
    Admission,
    AdmissionConfig,
    TokenBucket,
    mint_token,
    offered_token,
    verify_signed,
)
from voxgate.supervisor.http import Head


def head(*headers: tuple[str, str]) -> Head:
    return Head(method="GET", target="/openai", headers=list(headers), raw=b"", head_len=0)


def test_token_sources():
    assert offered_token(head(), [("token", "q")]) == "q"
    assert offered_token(head(("authorization", "Bearer b")), []) == "b"
    assert offered_token(head(("sec-websocket-protocol", "access_token.a")), []) == "a"
    assert offered_token(head(("sec-websocket-protocol", "realtime, bearer.c")), []) == "c"
    assert offered_token(head(("sec-websocket-protocol", "token, t1")), []) == "t1"
    assert offered_token(head(("sec-websocket-protocol", "openai-insecure-api-key.k")), []) == "k"
    assert offered_token(head(("authorization", "Token dg")), []) is None
    assert offered_token(head(), [("token", "")]) is None


def test_signed_tokens_expire_and_resist_tampering():
    token, expires = mint_token("s3cret", ttl=60, origin="https://app", provider="openai", now=1000)
    assert expires == 1060
    claims = verify_signed("s3cret", token, now=1059)
    assert claims["o"] == "https://app" and claims["p"] == "openai"
    assert verify_signed("s3cret", token, now=1060) is None  # expired
    assert verify_signed("other", token, now=1001) is None  # wrong secret
    prefix, body, sig = token.split(".")
    assert verify_signed("s3cret", f"{prefix}.{body}x.{sig}", now=1001) is None
    assert verify_signed("s3cret", f"{prefix}.{body}.{sig[:-2]}AA", now=1001) is None
    assert verify_signed("s3cret", "garbage", now=1001) is None


def test_bound_claims_are_enforced():
    adm = Admission(AdmissionConfig(token_secret="k"))
    token, _ = mint_token("k", ttl=60, origin="https://a", provider="deepgram")
    ok = adm.check(head(("origin", "https://a")), [("token", token)], "deepgram", "1.1.1.1",
                   total_sessions=0, ip_sessions=0, now=0)
    assert ok is None
    for origin, provider in (("https://b", "deepgram"), ("https://a", "openai")):
        rej = adm.check(head(("origin", origin)), [("token", token)], provider, "1.1.1.1",
                        total_sessions=0, ip_sessions=0, now=0)
        assert rej is not None and rej.status == 401


def test_token_bucket_refills():
    bucket = TokenBucket(3)
    assert [bucket.take("ip", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take("ip", 0.0)
    assert 19.9 < wait <= 20.0  # one token per 20 s at 3/minute
    assert bucket.take("ip", 20.0) == 0.0
    assert bucket.take("other", 0.0) == 0.0


def test_caps_order_and_codes():
    adm = Admission(AdmissionConfig(allowed_origins=("https://ok",), client_tokens=("t",), max_sessions=2,
                                    max_sessions_per_ip=1))
    check = lambda h, q, total=0, per_ip=0: adm.check(h, q, "openai", "ip", total_sessions=total,  # noqa: E731
                                                      ip_sessions=per_ip, now=0)
    assert check(head(("origin", "https://evil")), [("token", "t")]).status == 403
    assert check(head(("origin", "https://ok")), []).reason == "token_missing"
    assert check(head(("origin", "https://ok")), [("token", "x")]).reason == "token_invalid"
    assert check(head(("origin", "https://ok")), [("token", "t")], total=2).status == 503
    rej = check(head(("origin", "https://ok")), [("token", "t")], per_ip=1)
    assert rej.status == 429 and rej.retry_after
    assert check(head(("origin", "https://ok")), [("token", "t")]) is None


def test_no_origin_with_a_valid_token_is_a_server_client():
    """Issue 16 §4: the allow-list guards browsers (which always send Origin)."""
    token, _ = mint_token("k", ttl=60, origin="https://ok", provider="openai")
    adm = Admission(AdmissionConfig(allowed_origins=("https://ok",), client_tokens=("t",), token_secret="k"))
    check = lambda h, q: adm.check(h, q, "openai", "ip", total_sessions=0, ip_sessions=0, now=0)  # noqa: E731
    assert check(head(), [("token", "t")]) is None
    assert check(head(("authorization", "Bearer t")), []) is None
    assert check(head(), []).status == 403
    assert check(head(), [("token", "wrong")]).status == 403
    assert check(head(), [("token", token)]).status == 403  # bound to a browser origin
    assert check(head(("origin", "https://evil")), [("token", "t")]).status == 403
