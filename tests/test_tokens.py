"""tokens.py, sans-I/O: mint and verify session tokens (docs/tokens.md). No sockets, no clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wsrelay.core import tokens
from wsrelay.errors import AuthError, TokenError, WsrelayError
from wsrelay.core.tokens import (MAX_NONCE_CHARS, MAX_SID_CHARS, MAX_TOKEN_CHARS, TokenClaims,
                            missing_token_error, mint_token, nonce_lifetime, verify_token)

KEYS = {"k1": "old-secret-0123456789", "k2": "new-secret-9876543210"}
NOW = 1_700_000_000
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Deterministic and file-free: the same examples on every run, no .hypothesis directory.
PROPERTY = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- helpers: an independent implementation of the wire format ---------------------------

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed(claims, secret: str, *, raw_json: bytes | None = None) -> str:
    """A token whose payload is ``claims`` (any JSON), correctly signed with ``secret``."""
    payload = b64(raw_json if raw_json is not None else json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest()
    return f"{payload}.{b64(signature)}"


def claims_of(token: str) -> dict:
    return json.loads(unb64(token.partition(".")[0]))


def mint(service_host="echo.demo", *, kid="k2", ttl=300, now=NOW, **kw) -> str:
    return mint_token(service_host, keys=KEYS, active_key=kid, ttl=ttl, now=now, **kw)


def verify(token, service_host="echo.demo", *, keys=KEYS, now=NOW, leeway=30) -> TokenClaims:
    return verify_token(token, service_host=service_host, keys=keys, now=now, leeway=leeway)


def refused(token, service_host="echo.demo", **kw) -> AuthError:
    """The AuthError of a refused token; checks it is a 403 that tells the client nothing."""
    with pytest.raises(AuthError) as info:
        verify(token, service_host, **kw)
    exc = info.value
    assert exc.status == 403
    assert exc.public_reason == "Forbidden"
    assert str(exc) and str(exc) == str(exc).strip() and len(str(exc).split()) >= 3
    return exc


# -- strategies --------------------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9-]{1,63}", fullmatch=True)
service_hosts = st.builds(lambda a, o: f"{a}.{o}", labels, labels)
secrets_ = st.text(min_size=1, max_size=64)
key_maps = st.dictionaries(st.text(min_size=1, max_size=40), secrets_, min_size=1, max_size=5)
session_ids = st.none() | st.text(max_size=MAX_SID_CHARS)
nonces = st.none() | st.text(min_size=1, max_size=MAX_NONCE_CHARS)
ttls = st.integers(min_value=1, max_value=10 ** 9)
nows = st.integers(min_value=0, max_value=2 ** 40) | st.floats(min_value=0, max_value=2 ** 40)


# -- the wire format -----------------------------------------------------------------------

def test_token_is_payload_dot_hmac_sha256_of_the_payload():
    token = mint("echo.demo", kid="k1", ttl=60, now=NOW + 0.9, nonce="n-1", session_id="s-1")
    payload, dot, signature = token.partition(".")
    assert dot and "=" not in token and "." not in signature
    assert claims_of(token) == {"sh": "echo.demo", "exp": NOW + 60, "nonce": "n-1", "kid": "k1",
                                "sid": "s-1"}
    expected = hmac.new(KEYS["k1"].encode(), payload.encode(), hashlib.sha256).digest()
    assert unb64(signature) == expected
    assert len(signature) == 43


def test_minted_nonces_are_random_and_session_id_is_optional():
    a, b = mint(), mint()
    assert claims_of(a)["nonce"] != claims_of(b)["nonce"]
    assert len(claims_of(a)["nonce"]) >= 16
    assert "sid" not in claims_of(a)
    assert verify(a).session_id is None


# -- properties ------------------------------------------------------------------------------

@PROPERTY
@given(host=service_hosts, ttl=ttls, keys=key_maps, sid=session_ids, nonce=nonces, now=nows,
       data=st.data())
def test_mint_then_verify_returns_the_same_claims(host, ttl, keys, sid, nonce, now, data):
    kid = data.draw(st.sampled_from(sorted(keys)))
    token = mint_token(host, keys=keys, active_key=kid, ttl=ttl, now=now, session_id=sid, nonce=nonce)
    assert len(token) <= MAX_TOKEN_CHARS
    claims = verify_token(token, service_host=host, keys=keys, now=now, leeway=0)
    assert claims.service_host == host
    assert claims.exp == int(now) + ttl
    assert claims.kid == kid
    assert claims.session_id == sid
    if nonce:
        assert claims.nonce == nonce
    assert claims == TokenClaims(host, int(now) + ttl, claims.nonce, kid, sid)
    # still valid at its last second, not after
    assert verify_token(token, service_host=host, keys=keys, now=claims.exp, leeway=0) == claims
    with pytest.raises(AuthError):
        verify_token(token, service_host=host, keys=keys, now=claims.exp + 1, leeway=0)


@st.composite
def mutated_tokens(draw):
    """(original token, a different string derived from it by one mutation)."""
    host = draw(service_hosts)
    sid = draw(session_ids)
    token = mint(host, kid=draw(st.sampled_from(sorted(KEYS))), session_id=sid)
    kind = draw(st.sampled_from(["replace", "flip", "truncate", "insert", "delete", "swap-payload",
                                 "swap-signature"]))
    i = draw(st.integers(min_value=0, max_value=len(token) - 1))
    if kind == "replace":
        c = draw(st.sampled_from(B64URL + ".=+/ ") | st.characters())
        mutated = token[:i] + c + token[i + 1:]
    elif kind == "flip":
        bit = draw(st.integers(min_value=0, max_value=6))
        mutated = token[:i] + chr(ord(token[i]) ^ (1 << bit)) + token[i + 1:]
    elif kind == "truncate":
        mutated = token[:i]
    elif kind == "insert":
        mutated = token[:i] + draw(st.sampled_from(B64URL + ".=")) + token[i:]
    elif kind == "delete":
        mutated = token[:i] + token[i + 1:]
    else:
        other = mint(draw(service_hosts), kid=draw(st.sampled_from(sorted(KEYS))))
        p1, _, s1 = token.partition(".")
        p2, _, s2 = other.partition(".")
        mutated = f"{p2}.{s1}" if kind == "swap-payload" else f"{p1}.{s2}"
    return host, token, mutated


@PROPERTY
@given(mutated_tokens())
def test_no_single_mutation_of_a_token_verifies(case):
    host, token, mutated = case
    assume(mutated != token)
    assert verify(token, host).service_host == host
    refused(mutated, host)


def test_no_single_character_replacement_verifies_exhaustive():
    """Every position, every base64url character and '.': nothing but the original verifies.

    This covers the last signature character, whose two low bits are base64 padding: the
    verifier must not accept a non-canonical encoding of the right signature.
    """
    token = mint("echo.demo", nonce="fixed-nonce", session_id="sid")
    verify(token)
    accepted = []
    for i, original in enumerate(token):
        for c in B64URL + ".":
            if c == original:
                continue
            mutated = token[:i] + c + token[i + 1:]
            try:
                verify(mutated)
            except AuthError as exc:
                assert exc.status == 403
            else:
                accepted.append((i, original, c))
    assert accepted == [], f"mutated tokens accepted (position, was, now): {accepted}"


def test_non_canonical_last_signature_character_is_refused():
    token = mint("echo.demo", nonce="fixed-nonce")
    payload, _, signature = token.partition(".")
    last = B64URL.index(signature[-1])
    # 32 bytes -> 43 characters: the last one carries 4 bits of signature and 2 unused bits
    for twin in (c for c in B64URL if B64URL.index(c) >> 2 == last >> 2 and c != signature[-1]):
        refused(f"{payload}.{signature[:-1]}{twin}")


def test_every_truncation_is_refused():
    token = mint("echo.demo", session_id="s")
    for n in range(len(token)):
        refused(token[:n])


@PROPERTY
@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_-]{0,200}\.[A-Za-z0-9_-]{0,60}",
                                             fullmatch=True))
def test_arbitrary_strings_are_refused_with_403_and_nothing_else(text):
    refused(text)


# -- explicit refusals -------------------------------------------------------------------------

def test_tampered_signature_is_refused():
    token = mint()
    payload, _, signature = token.partition(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    assert "does not match" in str(refused(f"{payload}.{flipped}"))


def test_payload_edited_to_another_agent_with_old_signature_is_refused():
    token = mint("echo.demo")
    payload, _, signature = token.partition(".")
    claims = claims_of(token)
    claims["sh"] = "other.demo"
    forged = b64(json.dumps(claims, separators=(",", ":")).encode()) + "." + signature
    assert "does not match" in str(refused(forged, "other.demo"))
    assert "does not match" in str(refused(forged, "echo.demo"))


def test_token_for_another_agent_is_refused():
    token = mint("echo.demo")
    assert "another agent" in str(refused(token, "other.demo"))
    refused(token, "echo.demo2")
    refused(token, "ECHO.DEMO")


def test_unknown_kid_is_refused():
    token = mint(kid="k1")
    assert "unknown key id" in str(refused(token, keys={"k2": KEYS["k2"]}))
    assert "unknown key id" in str(refused(token, keys={}))
    # a kid that is not a string, or missing, is unknown too
    for kid in (None, 1, ["k1"], {"k1": 1}, True):
        claims = {"sh": "echo.demo", "exp": NOW + 60, "nonce": "n", "kid": kid}
        if kid is None:
            del claims["kid"]
        assert "unknown key id" in str(refused(signed(claims, KEYS["k1"])))


def test_key_rotation():
    old = mint(kid="k1", nonce="a")
    new = mint(kid="k2", nonce="b")
    assert verify(old).kid == "k1"
    assert verify(new).kid == "k2"
    without_old = {"k2": KEYS["k2"]}
    refused(old, keys=without_old)
    assert verify(new, keys=without_old).kid == "k2"
    # the same key id with another secret: the signature no longer matches
    assert "does not match" in str(refused(old, keys={"k1": "rotated-secret", "k2": KEYS["k2"]}))


def test_expiry_is_exact_at_the_leeway_boundary():
    token = mint(ttl=60, now=NOW)
    exp = NOW + 60
    assert verify(token, now=exp, leeway=0).exp == exp
    refused(token, now=exp + 1, leeway=0)
    assert verify(token, now=exp + 30, leeway=30).exp == exp        # exp + leeway == now
    assert verify(token, now=exp + 29.999, leeway=30).exp == exp
    assert "expired" in str(refused(token, now=exp + 31, leeway=30))  # now = exp + leeway + 1
    refused(token, now=exp + 30.001, leeway=30)


def test_a_token_from_the_future_is_accepted():
    """Only expiry is checked: a token minted by a relay whose clock is ahead still verifies."""
    token = mint(ttl=60, now=NOW + 1000)
    assert verify(token, now=NOW).exp == NOW + 1060


def test_oversized_token_is_refused_even_when_correctly_signed():
    def token_of_length(target: int) -> str | None:
        for n in range(1, 3000):
            kid = "k" * n
            token = mint_token("echo.demo", keys={kid: "s"}, active_key=kid, ttl=60, now=NOW,
                               nonce="n")
            if len(token) == target:
                return token
            if len(token) > target:
                return None
        return None

    at_limit = token_of_length(MAX_TOKEN_CHARS)
    assert at_limit is not None
    kid = claims_of(at_limit)["kid"]
    assert verify(at_limit, keys={kid: "s"}).kid == kid
    over = token_of_length(MAX_TOKEN_CHARS + 2)       # unpadded base64 never has length 4n+1
    assert over is not None
    kid = claims_of(over)["kid"]
    assert "longer than" in str(refused(over, keys={kid: "s"}))
    refused("A" * (MAX_TOKEN_CHARS + 1))
    refused("A" * 10 ** 6)


@pytest.mark.parametrize("garbage", [
    "", ".", "..", "a", "a.", ".a", "a.b.c", "abc.def.", "!!!!.!!!!", "eyJ9.eyJ9", "é.é",
    " " + "A" * 20, "A" * 20 + " ", "A" * 20 + ".", "AAAA.AAAA", "A.A", "AAAAA.AAAA",
    "Bearer xyz", "%41%41.%41", "null", "{}", "e30.e30", "e30", "\x00.\x00",
])
def test_garbage_is_refused(garbage):
    refused(garbage)


def test_non_string_token_is_refused():
    for value in (None, b"abc.def", 12, ["a", "b"]):
        refused(value)


@pytest.mark.parametrize("document", [b"[1, 2]", b'"a string"', b"42", b"null", b"true", b"[]",
                                      b'[{"kid": "k1"}]'])
def test_non_object_json_payload_is_refused(document):
    token = signed(None, KEYS["k1"], raw_json=document)
    assert "not a JSON object" in str(refused(token))


@pytest.mark.parametrize("document", [b"", b"{", b"\xff\xfe{}", b"{'a': 1}", b"\x00" * 5,
                                      b'{"kid": "k1"} trailing', b'{"a": NaN-}'])
def test_payload_that_is_not_json_is_refused(document):
    token = signed(None, KEYS["k1"], raw_json=document)
    refused(token)


def test_deeply_nested_json_payload_is_refused_with_403():
    """Hostile input, checked before any signature: must be a 403, never a RecursionError."""
    for document in (b"[" * 1500, b"[" * 1400 + b"1]]", b'{"a":' * 100 + b"[" * 1000):
        token = b64(document) + ".AAAA"
        assert len(token) <= MAX_TOKEN_CHARS
        refused(token)


def _claims(**override):
    claims = {"sh": "echo.demo", "exp": NOW + 60, "nonce": "n", "kid": "k1"}
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not _MISSING}


_MISSING = object()


def test_well_formed_hand_signed_claims_verify():
    """The control for the wrong-type cases below: the helper itself makes valid tokens."""
    assert verify(signed(_claims(), KEYS["k1"])) == TokenClaims("echo.demo", NOW + 60, "n", "k1")
    assert verify(signed(_claims(sid="s"), KEYS["k1"])).session_id == "s"
    assert verify(signed(_claims(nonce="n" * MAX_NONCE_CHARS), KEYS["k1"])).nonce == "n" * MAX_NONCE_CHARS
    assert verify(signed(_claims(sid="s" * MAX_SID_CHARS), KEYS["k1"])).session_id == "s" * MAX_SID_CHARS
    assert verify(signed(_claims(sid=None), KEYS["k1"])).session_id is None
    assert verify(signed(_claims(extra=[1, 2]), KEYS["k1"])).exp == NOW + 60   # unknown claims ignored


@pytest.mark.parametrize("override, words", [
    ({"exp": True}, "'exp'"),
    ({"exp": False}, "'exp'"),
    ({"exp": str(NOW + 60)}, "'exp'"),
    ({"exp": float(NOW + 60)}, "'exp'"),
    ({"exp": None}, "'exp'"),
    ({"exp": _MISSING}, "'exp'"),
    ({"exp": [NOW + 60]}, "'exp'"),
    ({"nonce": "n" * (MAX_NONCE_CHARS + 1)}, "'nonce'"),
    ({"nonce": ""}, "'nonce'"),
    ({"nonce": 5}, "'nonce'"),
    ({"nonce": _MISSING}, "'nonce'"),
    ({"sid": "s" * (MAX_SID_CHARS + 1)}, "'sid'"),
    ({"sid": 7}, "'sid'"),
    ({"sid": ["s"]}, "'sid'"),
    ({"sh": _MISSING}, "'sh'"),
    ({"sh": ["echo.demo"]}, "'sh'"),
    ({"sh": None}, "'sh'"),
])
def test_wrong_claim_types_are_refused(override, words):
    exc = refused(signed(_claims(**override), KEYS["k1"]))
    assert words in str(exc)


def test_huge_exp_values_do_not_crash():
    refused(signed(_claims(exp=-(10 ** 30)), KEYS["k1"]))
    assert verify(signed(_claims(exp=10 ** 30), KEYS["k1"])).exp == 10 ** 30


# -- minting errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("active", ["", "k3", None])
def test_mint_without_an_active_key_raises_token_error(active):
    with pytest.raises(TokenError) as info:
        mint_token("echo.demo", keys=KEYS, active_key=active, ttl=60, now=NOW)
    assert not isinstance(info.value, AuthError)
    assert isinstance(info.value, WsrelayError)
    assert "signing key" in str(info.value)


def test_mint_with_no_keys_raises_token_error():
    with pytest.raises(TokenError):
        mint_token("echo.demo", keys={}, active_key="k1", ttl=60, now=NOW)


@pytest.mark.parametrize("ttl", [0, -1, -300])
def test_mint_with_non_positive_ttl_raises_token_error(ttl):
    with pytest.raises(TokenError) as info:
        mint(ttl=ttl)
    assert "positive" in str(info.value)


# -- the rest of the module ----------------------------------------------------------------------

def test_missing_token_error_is_a_401():
    exc = missing_token_error()
    assert isinstance(exc, AuthError)
    assert exc.status == 401
    assert exc.public_reason.startswith("Unauthorized")


def test_nonce_lifetime_covers_the_validity_and_is_at_least_a_second():
    claims = TokenClaims("echo.demo", NOW + 60, "n", "k1")
    # The whole validity (exp + leeway - now) and one second more, so a replay at the
    # exact instant the token stops verifying is still caught.
    assert nonce_lifetime(claims, NOW, 30) == 91
    assert nonce_lifetime(claims, NOW + 89.5, 30) == 1.5
    assert nonce_lifetime(claims, NOW + 90, 30) > 0   # still verifies at exp + leeway
    assert nonce_lifetime(claims, NOW + 1000, 30) == 1.0


def test_verify_compares_signatures_with_compare_digest(monkeypatch):
    source = inspect.getsource(tokens._signed_claims)     # what verify_token and verify_resume_token share
    assert "hmac.compare_digest" in source
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    verify(mint())
    assert len(calls) == 1
    payload, _, signature = mint().partition(".")
    refused(payload + "." + ("B" if signature[0] == "A" else "A") + signature[1:])
    assert len(calls) == 2


# -- resume tokens (docs/resume.md) ----------------------------------------------------------

from wsrelay.core.tokens import ResumeClaims, mint_resume_token, verify_resume_token  # noqa: E402


def mint_resume(service_host="echo.demo", session_id="s-1", *, kid="k2", ttl=300, now=NOW, **kw) -> str:
    return mint_resume_token(service_host, session_id, keys=KEYS, active_key=kid, ttl=ttl, now=now, **kw)


def verify_resume(token, service_host="echo.demo", *, keys=KEYS, now=NOW, leeway=30) -> ResumeClaims:
    return verify_resume_token(token, service_host=service_host, keys=keys, now=now, leeway=leeway)


def test_a_resume_token_names_its_session_and_verifies():
    claims = verify_resume(mint_resume(nonce="n-1"))
    assert claims == ResumeClaims("echo.demo", "s-1", NOW + 300, "n-1", "k2")
    assert claims_of(mint_resume())["typ"] == "resume"


def test_each_kind_of_token_refuses_the_other():
    assert "cannot start a session" in str(refused(mint_resume()))
    with pytest.raises(AuthError, match="not a resume token") as info:
        verify_resume(mint(session_id="s-1"))
    assert info.value.status == 403


@pytest.mark.parametrize("token, why", [
    (lambda: mint_resume(service_host="other.demo"), "another agent"),
    (lambda: mint_resume(now=NOW - 400), "expired"),
    (lambda: signed({"typ": "resume", "sh": "echo.demo", "exp": NOW + 9, "nonce": "n", "kid": "k1"},
                    KEYS["k1"]), "names no session"),
    (lambda: mint_resume()[:-2] + "AA", "signature"),
    (lambda: signed({"typ": "resume", "sh": "echo.demo", "sid": "s", "exp": NOW + 9, "nonce": "n", "kid": "k1"},
                    "not-the-key"), "signature"),
])
def test_a_foreign_expired_or_forged_resume_token_is_403(token, why):
    with pytest.raises(AuthError, match=why) as info:
        verify_resume(token())
    assert info.value.status == 403 and info.value.public_reason == "Forbidden"


def test_a_resume_token_needs_a_session_and_a_key():
    with pytest.raises(TokenError):
        mint_resume(session_id="")
    with pytest.raises(TokenError):
        mint_resume(kid="nope")


def test_resume_tokens_are_single_use_and_work_without_a_configured_key():
    import asyncio

    from wsrelay.admission.nonces import MemoryNonceStore
    from wsrelay.admission.resume_tokens import ResumeTokens
    from wsrelay.config import AuthConfig

    async def main() -> None:
        for auth in (AuthConfig(), AuthConfig(keys=KEYS, active_key="k2")):
            resume = ResumeTokens(auth, MemoryNonceStore(), clock=lambda: NOW)
            token, nonce = resume.mint("echo.demo", "s-1", ttl=60)
            claims = resume.verify(token, "echo.demo")
            assert claims.session_id == "s-1" and claims.nonce == nonce
            await resume.claim(claims)
            with pytest.raises(AuthError, match="used already"):
                await resume.claim(claims)
            with pytest.raises(AuthError, match="another agent"):
                resume.verify(token, "other.demo")
        # A relay's own key is its own: another relay without [auth] keys refuses its tokens.
        mine = ResumeTokens(AuthConfig(), MemoryNonceStore(), clock=lambda: NOW)
        theirs = ResumeTokens(AuthConfig(), MemoryNonceStore(), clock=lambda: NOW)
        with pytest.raises(AuthError, match="unknown key id|signature"):
            theirs.verify(mine.mint("echo.demo", "s-1", ttl=60)[0], "echo.demo")

    asyncio.run(main())
