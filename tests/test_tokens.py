"""Access tokens: minting, the claims on the wire, and every way verification refuses one.

Every refusal asserts the exact error class: `TokenExpired` means "a good token, too old"
(the client refreshes it), `InvalidToken` everything else.
"""

from __future__ import annotations

import base64
import json
import pickle
import warnings
from typing import Any

import jwt
import pytest

import schemas.models
import stagecast
from access.tokens import (
    ADMIN_MAX_TTL,
    DEFAULT_LEEWAY,
    MAX_TOKEN_CHARS,
    ROOMLESS_MAX_TTL,
    VIEWER_GRANT,
    AdminClaims,
    AdminGrant,
    Claims,
    Grant,
    generate_admin_token,
    generate_token,
    verify_admin_token,
    verify_token,
)
from schemas.errors import ErrorCode
from stagecast import errors
from stagecast.errors import (
    InvalidPermissions,
    InvalidStateError,
    InvalidToken,
    StagecastError,
    TokenExpired,
    error_for,
)

NOW = 1_700_000_000
KEY = "APIkey1"
SECRET = "s3cret-that-is-long-enough-for-HS512-" + "x" * 27  # 64 bytes: no key-length warning
SECRETS = {KEY: SECRET}
PRIVILEGED = ["can_moderate", "can_record", "can_hls", "can_livestream"]
WIRE_GRANT_KEYS = {
    "canPublish",
    "canSubscribe",
    "canPublishData",
    "canSubscribeData",
    "canModerate",
    "canRecord",
    "canHls",
    "canLivestream",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _claims(**changes: Any) -> dict[str, Any]:
    """A valid participant payload at NOW; a change to `...` deletes that claim."""
    claims: dict[str, Any] = {
        "iss": KEY,
        "roomId": "webinar",
        "sub": "alice",
        "participantId": "alice",
        "isViewer": False,
        "grant": {"canPublish": True, "canModerate": True},
        "name": "Alice",
        "metadata": "",
        "attributes": {},
        "kind": "standard",
        "exp": NOW + 600,
        "nbf": NOW,
        "iat": NOW,
        "jti": "jti-1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not ...}


def _forge(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    """Sign a payload by hand (with the real secret unless told otherwise)."""
    return jwt.encode(claims, secret, algorithm=algorithm)


def _forge_raw(
    payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}', secret: str = SECRET
) -> str:
    """Sign arbitrary payload bytes with HMAC-SHA256 and the real secret, whatever the header
    says (PyJWT's own `encode` refuses some of the shapes tested here)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = jwt.get_algorithm_by_name("HS256").sign(signing_input.encode(), secret.encode())
    return f"{signing_input}.{_b64(signature)}"


def _refused(
    error: type[StagecastError], token: Any, lookup: Any = SECRETS, **kw: Any
) -> StagecastError:
    with pytest.raises(StagecastError) as info:
        verify_token(token, lookup, now=kw.pop("now", NOW), **kw)
    assert type(info.value) is error, repr(info.value)
    assert info.value.code == error.CODE
    return info.value


# --------------------------------------------------------------------------- minting


def test_every_claim_round_trips() -> None:
    grant = Grant(can_publish=False, can_subscribe=True, can_publish_data=False, can_hls=True)
    token = generate_token(
        KEY,
        SECRET,
        room_id="webinar-2026-05",
        participant_id="host-1",
        name="Zoë",
        is_viewer=True,
        grant=grant,
        metadata='{"role":"host"}',
        attributes={"hand": "raised", "lang": "fr"},
        kind="agent",
        ttl=120,
        now=NOW,
    )
    claims = verify_token(token, SECRETS, now=NOW + 60)
    assert claims == Claims(
        api_key=KEY,
        room_id="webinar-2026-05",
        participant_id="host-1",
        name="Zoë",
        is_viewer=True,
        grant=grant,
        metadata='{"role":"host"}',
        attributes={"hand": "raised", "lang": "fr"},
        kind="agent",
        expires_at=NOW + 120,
        not_before=NOW,
        issued_at=NOW,
        token_id=claims.token_id,
    )
    assert len(claims.token_id) >= 16


def test_defaults_round_trip() -> None:
    claims = verify_token(generate_token(KEY, SECRET, room_id="r", now=NOW), SECRETS, now=NOW)
    assert claims.participant_id is None
    assert (claims.name, claims.metadata, claims.attributes) == ("", "", {})
    assert claims.grant == Grant()
    assert (claims.is_viewer, claims.kind) == (False, "standard")
    assert claims.expires_at == NOW + 3600


def test_viewer_token_minted_without_a_grant_may_not_publish_media_or_data() -> None:
    claims = verify_token(
        generate_token(KEY, SECRET, room_id="r", is_viewer=True, now=NOW), SECRETS, now=NOW
    )
    assert claims.grant == VIEWER_GRANT
    assert not claims.grant.can_publish and not claims.grant.can_publish_data
    assert claims.grant.can_subscribe and claims.grant.can_subscribe_data
    # An explicit grant still wins, and a speaker's default is unchanged.
    explicit = Grant(can_publish=False, can_publish_data=True)
    token = generate_token(KEY, SECRET, room_id="r", is_viewer=True, grant=explicit, now=NOW)
    assert verify_token(token, SECRETS, now=NOW).grant == explicit
    speaker = verify_token(generate_token(KEY, SECRET, room_id="r", now=NOW), SECRETS, now=NOW)
    assert speaker.grant == Grant()


def test_claims_are_camel_case_on_the_wire() -> None:
    token = generate_token(
        KEY, SECRET, room_id="r", participant_id="p", grant=Grant(can_record=True), now=NOW
    )
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    payload = _payload(token)
    assert set(payload) == {
        "iss",
        "sub",
        "roomId",
        "participantId",
        "isViewer",
        "grant",
        "name",
        "metadata",
        "attributes",
        "kind",
        "exp",
        "nbf",
        "iat",
        "jti",
    }
    assert payload["grant"] == {
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
        "canSubscribeData": True,
        "canModerate": False,
        "canRecord": True,
        "canHls": False,
        "canLivestream": False,
    }
    assert set(payload["grant"]) == WIRE_GRANT_KEYS
    assert (payload["iss"], payload["sub"], payload["participantId"]) == (KEY, "p", "p")
    assert (payload["nbf"], payload["iat"], payload["exp"]) == (NOW, NOW, NOW + 3600)


def test_roomless_token_omits_room_and_participant() -> None:
    payload = _payload(generate_token(KEY, SECRET, is_viewer=True, ttl=600, now=NOW))
    assert not {"roomId", "participantId", "sub"} & set(payload)
    claims = verify_token(generate_token(KEY, SECRET, ttl=600, now=NOW), SECRETS, now=NOW)
    assert (claims.room_id, claims.participant_id) == (None, None)


def test_token_ids_are_unique() -> None:
    tokens = {_payload(generate_token(KEY, SECRET, room_id="r", now=NOW))["jti"] for _ in range(50)}
    assert len(tokens) == 50


@pytest.mark.parametrize("flag", PRIVILEGED)
def test_roomless_token_with_privileged_grant_cannot_be_minted(flag: str) -> None:
    grant = Grant(**{flag: True})
    with pytest.raises(ValueError, match="roomless"):
        generate_token(KEY, SECRET, grant=grant, ttl=60, now=NOW)
    # The same grant is fine in a room.
    assert verify_token(generate_token(KEY, SECRET, "r", grant=grant, now=NOW), SECRETS, now=NOW)


def test_roomless_ttl_is_capped() -> None:
    assert ROOMLESS_MAX_TTL == 900
    claims = verify_token(generate_token(KEY, SECRET, ttl=900, now=NOW), SECRETS, now=NOW)
    assert claims.expires_at - claims.issued_at == 900
    with pytest.raises(ValueError, match="900"):
        generate_token(KEY, SECRET, ttl=901, now=NOW)
    with pytest.raises(ValueError, match="roomless"):
        generate_token(KEY, SECRET)  # the default ttl (1 h) is too long without a room
    generate_token(KEY, SECRET, room_id="r", ttl=86_400, now=NOW)  # rooms have no cap


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"room_id": "r" * 257}, ValueError),
        ({"participant_id": "p" * 257}, ValueError),
        ({"name": "n" * 257}, ValueError),
        ({"room_id": ""}, ValueError),
        ({"participant_id": ""}, ValueError),
        ({"metadata": "m" * (64 * 1024 + 1)}, ValueError),
        ({"attributes": {"k": "v" * 64 * 1024}}, ValueError),
        ({"attributes": {str(i): "" for i in range(1025)}}, ValueError),
        ({"metadata": "m" * 6000}, ValueError),  # within 64 KiB, but the token passes 8192
        ({"kind": "robot"}, ValueError),
        ({"ttl": 0}, ValueError),
        ({"ttl": -5}, ValueError),
        ({"name": "\ud800"}, ValueError),  # a lone surrogate cannot go on the wire
        ({"participant_id": "x\x00y"}, ValueError),  # no store can hold NUL
        ({"participant_id": "x\ny"}, ValueError),  # ids hold no control character
        ({"room_id": "x\x1fy"}, ValueError),
        ({"name": "Al\x00ice"}, ValueError),
        ({"metadata": "m\x00"}, ValueError),
        ({"attributes": {"k": "v\x00"}}, ValueError),
        ({"ttl": 60.5}, TypeError),
        ({"name": 5}, TypeError),
        ({"attributes": {"k": 1}}, TypeError),
        ({"attributes": [("k", "v")]}, TypeError),
        ({"is_viewer": "yes"}, TypeError),
        ({"grant": {"canPublish": True}}, TypeError),
    ],
)
def test_minting_enforces_the_wire_limits(changes: dict[str, Any], error: type[Exception]) -> None:
    args: dict[str, Any] = {"room_id": "r", "now": NOW, **changes}
    with pytest.raises(error):
        generate_token(KEY, SECRET, **args)


@pytest.mark.parametrize(
    "changes",
    [
        {"participantId": "al\x00ice", "sub": "al\x00ice"},
        {"roomId": "web\x07inar"},
        {"name": "Ali\x00ce"},
        {"metadata": "\x00"},
        {"attributes": {"k\x00": "v"}},
        {"jti": "jti\x00"},
    ],
)
def test_a_signed_token_with_a_forbidden_character_is_refused(changes: dict[str, Any]) -> None:
    """A token minted elsewhere with NUL (or a control character in an id) is refused at
    once, instead of reaching the room log where no store could keep its join."""
    error = _refused(InvalidToken, _forge(_claims(**changes)))
    assert "forbidden character" in error.message


def test_limits_are_inclusive() -> None:
    token = generate_token(
        KEY,
        SECRET,
        room_id="r" * 256,
        participant_id="p" * 256,
        name="n" * 256,
        metadata="m" * 3000,
        attributes={"a": "b" * 1000},
        now=NOW,
    )
    assert len(token) <= MAX_TOKEN_CHARS
    claims = verify_token(token, SECRETS, now=NOW)
    assert claims.room_id == "r" * 256
    assert claims.name == "n" * 256


def test_minting_needs_a_key_and_a_secret() -> None:
    with pytest.raises(ValueError):
        generate_token(KEY, "", room_id="r")
    with pytest.raises(ValueError):
        generate_token("", SECRET, room_id="r")


def test_real_clock_is_the_default() -> None:
    claims = verify_token(generate_token(KEY, SECRET, room_id="r", ttl=60), SECRETS)
    assert claims.expires_at - claims.issued_at == 60


def test_short_secret_warns() -> None:
    """PyJWT warns about HMAC secrets under 32 bytes, and the test suite turns warnings into
    errors: tests must use long secrets (the dev default `devsecret` is too short)."""
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        generate_token(KEY, "devsecret", room_id="r", now=NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate_token(KEY, SECRET, room_id="r", now=NOW)


# --------------------------------------------------------------------------- verifying


def test_wrong_secret_is_refused() -> None:
    token = generate_token(KEY, SECRET, room_id="r", now=NOW)
    _refused(InvalidToken, token, {KEY: SECRET + "!"})
    _refused(InvalidToken, _forge(_claims(), secret="another-secret-" + "y" * 40))


def test_alg_none_is_refused() -> None:
    body = _b64(json.dumps(_claims()).encode())
    for alg in ("none", "None", "NONE"):
        header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        assert "algorithm" in str(_refused(InvalidToken, f"{header}.{body}."))
    # Sanity: the same payload, properly signed, is accepted.
    assert verify_token(_forge(_claims()), SECRETS, now=NOW).participant_id == "alice"


def test_hs512_is_refused_even_with_the_right_secret() -> None:
    assert "algorithm" in str(_refused(InvalidToken, _forge(_claims(), algorithm="HS512")))
    _refused(InvalidToken, _forge(_claims(), algorithm="HS384"))


def test_rs256_header_is_refused() -> None:
    # Algorithm confusion: an RS256 header over an HMAC signature made with the secret.
    payload = json.dumps(_claims()).encode()
    assert verify_token(_forge_raw(payload), SECRETS, now=NOW)  # HS256: accepted
    error = _refused(InvalidToken, _forge_raw(payload, b'{"alg":"RS256","typ":"JWT"}'))
    assert "RS256" in str(error)
    _refused(InvalidToken, _forge_raw(payload, b'{"typ":"JWT"}'))  # no alg at all


def test_rs256_signed_token_is_refused() -> None:
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _refused(InvalidToken, jwt.encode(_claims(), key, algorithm="RS256"))


def test_expired_token() -> None:
    token = generate_token(KEY, SECRET, room_id="r", ttl=60, now=NOW)
    assert verify_token(token, SECRETS, now=NOW + 60 + 9)  # within the 10 s leeway
    _refused(TokenExpired, token, now=NOW + 60 + 10)
    _refused(TokenExpired, token, now=NOW + 61, leeway=0)
    assert verify_token(token, SECRETS, now=NOW + 61, leeway=5)


def test_expired_token_with_a_bad_signature_is_invalid_not_expired() -> None:
    token = generate_token(KEY, SECRET, room_id="r", ttl=60, now=NOW)
    _refused(InvalidToken, token, {KEY: "wrong-" + SECRET}, now=NOW + 3600)


def test_not_yet_valid_beyond_leeway_is_refused() -> None:
    token = generate_token(KEY, SECRET, room_id="r", now=NOW)
    assert verify_token(token, SECRETS, now=NOW - 10)  # clock skew within the leeway
    _refused(InvalidToken, token, now=NOW - 11)
    _refused(InvalidToken, token, now=NOW - 1, leeway=0)
    # nbf and iat are each checked.
    _refused(InvalidToken, _forge(_claims(nbf=NOW + 100, exp=NOW + 700)))
    _refused(InvalidToken, _forge(_claims(iat=NOW + 100)))


@pytest.mark.parametrize("flag", ["canModerate", "canRecord", "canHls", "canLivestream"])
def test_forged_roomless_token_with_privileged_grant_is_refused(flag: str) -> None:
    _refused(InvalidToken, _forge(_claims(roomId=..., exp=NOW + 60, grant={flag: True})))
    _refused(InvalidToken, _forge(_claims(roomId=None, exp=NOW + 60, grant={flag: True})))
    # The same token with the flag off is a good roomless token, and in a room it is fine.
    off = verify_token(
        _forge(_claims(roomId=..., exp=NOW + 60, grant={flag: False})), SECRETS, now=NOW
    )
    assert off.room_id is None
    assert verify_token(_forge(_claims(grant={flag: True})), SECRETS, now=NOW).room_id == "webinar"


def test_forged_roomless_token_with_long_life_is_refused() -> None:
    ok = _forge(_claims(roomId=..., grant={}, exp=NOW + ROOMLESS_MAX_TTL + 10))
    assert verify_token(ok, SECRETS, now=NOW).room_id is None
    _refused(InvalidToken, _forge(_claims(roomId=..., grant={}, exp=NOW + ROOMLESS_MAX_TTL + 11)))
    _refused(InvalidToken, _forge(_claims(roomId=..., grant={}, exp=NOW + 86_400)))


def test_unknown_api_key_is_refused() -> None:
    token = generate_token("other-key", SECRET, room_id="r", now=NOW)
    _refused(InvalidToken, token)
    _refused(InvalidToken, token, lambda key: None)
    # An empty secret signs nothing, not even a token signed with the empty key.
    _refused(InvalidToken, _forge_raw(json.dumps(_claims()).encode(), secret=""), {KEY: ""})
    _refused(InvalidToken, _forge(_claims(iss=...)))
    _refused(InvalidToken, _forge_raw(json.dumps(_claims(iss=7)).encode()))
    _refused(InvalidToken, _forge(_claims(iss="")))


def test_secret_lookup_may_be_a_callable() -> None:
    asked: list[str] = []

    def lookup(key: str) -> str | None:
        asked.append(key)
        return SECRETS.get(key)

    token = generate_token(KEY, SECRET, room_id="r", now=NOW)
    assert verify_token(token, lookup, now=NOW).api_key == KEY
    assert asked == [KEY]


def test_oversize_token_is_refused() -> None:
    token = _forge(_claims(metadata="m" * 7000))
    assert len(token) > MAX_TOKEN_CHARS
    _refused(InvalidToken, token)
    _refused(InvalidToken, "a" * (MAX_TOKEN_CHARS + 1))


@pytest.mark.parametrize(
    "changes",
    [
        {"roomId": "r" * 257},
        {"participantId": "p" * 257, "sub": "p" * 257},
        {"name": "n" * 257},
        {"attributes": {str(i): "" for i in range(1025)}},
    ],
)
def test_oversize_claims_are_refused(changes: dict[str, Any]) -> None:
    _refused(InvalidToken, _forge(_claims(**changes)))


@pytest.mark.parametrize(
    "changes",
    [
        {"isViewer": "true"},
        {"isViewer": 1},
        {"grant": ["canPublish"]},
        {"grant": {"canPublish": 1}},
        {"grant": {"canModerate": "false"}},
        {"exp": float(NOW + 600)},
        {"exp": str(NOW + 600)},
        {"exp": True},
        {"exp": 2**70},
        {"nbf": -1},
        {"iat": None},
        {"exp": ...},
        {"iat": ...},
        {"nbf": ...},
        {"jti": ...},
        {"jti": 5},
        {"exp": NOW},  # expires as it is issued
        {"roomId": 123},
        {"roomId": ""},
        {"participantId": ["alice"]},
        {"sub": "mallory"},  # sub must equal participantId
        {"sub": ...},
        {"name": None},
        {"metadata": {"role": "host"}},
        {"attributes": {"k": 1}},
        {"attributes": "k=v"},
        {"kind": "robot"},
        {"admin": True},  # an admin token is not a participant token
        {"admin": False},
        {"typ": "resume"},  # nor is an edge's resume token (same secret, other claims)
    ],
)
def test_wrong_claim_types_are_refused(changes: dict[str, Any]) -> None:
    _refused(InvalidToken, _forge(_claims(**changes)))


def test_missing_optional_claims_take_defaults() -> None:
    minimal = _forge(
        {"iss": KEY, "roomId": "r", "exp": NOW + 60, "nbf": NOW, "iat": NOW, "jti": "j"}
    )
    claims = verify_token(minimal, SECRETS, now=NOW)
    assert claims.grant == Grant()
    assert (claims.is_viewer, claims.kind, claims.name, claims.participant_id) == (
        False,
        "standard",
        "",
        None,
    )


def test_viewer_token_missing_grant_flags_take_the_viewer_defaults() -> None:
    """A token minted elsewhere with `isViewer` and no (or a partial) grant sends no data."""
    base = {"iss": KEY, "roomId": "r", "isViewer": True, "exp": NOW + 60, "nbf": NOW, "iat": NOW}
    no_grant = verify_token(_forge(base | {"jti": "a"}), SECRETS, now=NOW)
    assert no_grant.grant == VIEWER_GRANT
    partial = _forge(base | {"jti": "b", "grant": {"canPublishData": True}})
    assert verify_token(partial, SECRETS, now=NOW).grant == Grant(
        can_publish=False, can_publish_data=True
    )


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not a token",
        "a.b.c",
        "....",
        "é.é.é",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJBUElrZXkxIn0",
        "eyJhbGciOiJIUzI1NiJ9.W10.",  # payload is a JSON array
        "bnVsbA.e30.",  # header is JSON null
        _b64(b'{"alg":"HS256","b64":false,"crit":["b64"]}') + "..",
        None,
        b"bytes.are.not",
        12345,
    ],
)
def test_garbage_is_refused(garbage: Any) -> None:
    _refused(InvalidToken, garbage)


def test_deeply_nested_json_is_refused() -> None:
    token = _forge_raw(b'{"iss":' + b"[" * 2500 + b"]" * 2500 + b"}")
    assert len(token) <= MAX_TOKEN_CHARS
    _refused(InvalidToken, token)
    header = _b64(b'{"alg":' + b"[" * 2500 + b"]" * 2500 + b"}")
    _refused(InvalidToken, f"{header}.e30.")


def test_non_object_payloads_are_refused() -> None:
    for payload in (b"[]", b"null", b'"text"', b"1", b"{", b"\xff"):
        _refused(InvalidToken, _forge_raw(payload))


# --------------------------------------------------------------------------- admin tokens


def test_admin_token_round_trip() -> None:
    token = generate_admin_token(KEY, SECRET, room_admin=True, room="stage", now=NOW)
    payload = _payload(token)
    assert payload["admin"] == {
        "roomCreate": False,
        "roomList": False,
        "roomAdmin": True,
        "room": "stage",
    }
    assert payload["exp"] == NOW + 60  # one call's worth by default
    claims = verify_admin_token(token, SECRETS, now=NOW + 30)
    assert claims == AdminClaims(
        api_key=KEY,
        grant=AdminGrant(room_admin=True, room="stage"),
        expires_at=NOW + 60,
        issued_at=NOW,
        token_id=payload["jti"],
    )
    unscoped = generate_admin_token(KEY, SECRET, room_create=True, room_list=True, now=NOW)
    assert "room" not in _payload(unscoped)["admin"]
    grant = verify_admin_token(unscoped, SECRETS, now=NOW).grant
    assert grant == AdminGrant(room_create=True, room_list=True)


def test_admin_token_that_grants_nothing_or_lives_long_cannot_be_minted() -> None:
    with pytest.raises(ValueError, match="allows nothing"):
        generate_admin_token(KEY, SECRET, now=NOW)
    with pytest.raises(ValueError, match="roomAdmin needs the room"):
        generate_admin_token(KEY, SECRET, room_admin=True, now=NOW)
    with pytest.raises(ValueError, match=f"at most {ADMIN_MAX_TTL}"):
        generate_admin_token(KEY, SECRET, ttl=ADMIN_MAX_TTL + 1, room_list=True, now=NOW)
    with pytest.raises(ValueError, match="room"):
        generate_admin_token(KEY, SECRET, room_create=True, room="x" * 257, now=NOW)
    with pytest.raises(TypeError):
        generate_admin_token(KEY, SECRET, room_list=1, now=NOW)  # type: ignore[arg-type]


def test_admin_grant_refusals_name_the_missing_grant_or_the_scope() -> None:
    create_b = AdminGrant(room_create=True, room="b")
    assert AdminGrant(room_create=True, room="a").refusal(create_b) == (
        "the admin token is scoped to room 'a', not 'b'"
    )
    assert AdminGrant(room_create=True).refusal(create_b) is None
    assert AdminGrant(room_admin=True, room="b").refusal(create_b) == (
        "the admin token has no roomCreate grant"
    )
    assert AdminGrant(room_create=True).refusal(AdminGrant(room_list=True)) == (
        "the admin token has no roomList grant"
    )


def test_admin_token_failures() -> None:
    token = generate_admin_token(KEY, SECRET, ttl=60, room_list=True, now=NOW)

    def refused(error: type[StagecastError], token: str, **kw: Any) -> None:
        with pytest.raises(StagecastError) as info:
            verify_admin_token(token, kw.pop("lookup", SECRETS), now=kw.pop("now", NOW), **kw)
        assert type(info.value) is error, repr(info.value)

    refused(TokenExpired, token, now=NOW + 70)
    refused(InvalidToken, token, now=NOW - 11)
    refused(InvalidToken, token, lookup={KEY: "x" * 64})
    refused(InvalidToken, token, lookup={})
    refused(InvalidToken, _forge({"iss": KEY, "admin": True, "exp": NOW + 60}))  # no iat/nbf
    refused(InvalidToken, _forge({**_claims(), "admin": True}, algorithm="HS512"))
    # A participant token, however privileged, is not an admin token.
    participant = generate_token(KEY, SECRET, room_id="r", grant=Grant(can_moderate=True), now=NOW)
    refused(InvalidPermissions, participant)
    refused(InvalidPermissions, _forge({**_claims(), "admin": "true"}))
    # An unscoped admin token of earlier versions, a malformed grant, too long a life.
    admin = {"iss": KEY, "exp": NOW + 60, "nbf": NOW, "iat": NOW, "jti": "j"}
    refused(InvalidPermissions, _forge(admin | {"admin": True}))
    refused(InvalidToken, _forge(admin | {"admin": {}}))
    refused(InvalidToken, _forge(admin | {"admin": {"roomAdmin": True}}))  # no room
    refused(InvalidToken, _forge(admin | {"admin": {"roomList": "yes"}}))
    refused(InvalidToken, _forge(admin | {"admin": {"roomCreate": True, "room": 7}}))
    forever = admin | {"admin": {"roomList": True}, "exp": NOW + ADMIN_MAX_TTL + DEFAULT_LEEWAY + 1}
    refused(InvalidToken, _forge(forever))
    # And an admin token is not a participant token.
    _refused(InvalidToken, token)


# --------------------------------------------------------------------------- package surface


def test_package_exports() -> None:
    assert stagecast.Grant is schemas.models.Grant
    assert stagecast.generate_token is generate_token
    assert stagecast.verify_token is verify_token
    assert stagecast.generate_admin_token is generate_admin_token
    assert stagecast.Claims is Claims
    assert stagecast.errors is errors
    assert stagecast.StagecastError is StagecastError


# --------------------------------------------------------------------------- error classes

CLASS_NAMES = {
    "INVALID_TOKEN": "InvalidToken",
    "TOKEN_EXPIRED": "TokenExpired",
    "INVALID_PERMISSIONS": "InvalidPermissions",
    "NOT_PUBLISHED": "NotPublished",
    "ROOM_FULL": "RoomFull",
    "ROOM_NOT_FOUND": "RoomNotFound",
    "PARTICIPANT_NOT_FOUND": "ParticipantNotFound",
    "TRACK_NOT_FOUND": "TrackNotFound",
    "DISPATCH_NOT_FOUND": "DispatchNotFound",
    "CURSOR_EXPIRED": "CursorExpired",
    "BAD_REQUEST": "BadRequest",
    "UNKNOWN_TYPE": "UnknownType",
    "PAYLOAD_TOO_LARGE": "PayloadTooLarge",
    "RATE_LIMITED": "RateLimited",
    "NOT_JOINED": "NotJoined",
    "ALREADY_JOINED": "AlreadyJoined",
    "DUPLICATE_IDENTITY": "DuplicateIdentity",
    "REMOVED": "Removed",
    "ROOM_DELETED": "RoomDeleted",
    "ROOM_CLOSED": "RoomClosed",
    "CLIENT_LEFT": "ClientLeft",
    "SLOW_CONSUMER": "SlowConsumer",
    "SERVER_SHUTDOWN": "ServerShutdown",
    "RESUME_FAILED": "ResumeFailed",
    "SESSION_LOST": "SessionLost",
    "JOIN_TIMEOUT": "JoinTimeout",
    "TOO_MANY_CONNECTIONS": "TooManyConnections",
    "SERVER_BUSY": "ServerBusy",
    "UNAVAILABLE": "Unavailable",
    "INTERNAL": "Internal",
}


def test_every_wire_code_has_its_class() -> None:
    assert set(CLASS_NAMES) == {code.value for code in ErrorCode}
    for code, name in CLASS_NAMES.items():
        cls: type[StagecastError] = getattr(errors, name)
        assert errors.ERRORS[code] is cls
        made = error_for(code, "detail")
        assert type(made) is cls
        assert (made.code, made.message) == (code, "detail")
        direct = cls("just a message")
        assert (direct.code, direct.message) == (code, "just a message")
        assert isinstance(direct, StagecastError)


def test_error_for_unknown_code_is_a_plain_stagecast_error() -> None:
    made = error_for("SOMETHING_NEW", "from a newer server")
    assert type(made) is StagecastError
    assert (made.code, made.message) == ("SOMETHING_NEW", "from a newer server")
    assert str(made) == "SOMETHING_NEW: from a newer server"


def test_invalid_state_error() -> None:
    error = InvalidStateError("publish after leave")
    assert error.code == "INVALID_STATE"
    assert isinstance(error, StagecastError)
    assert type(error_for("INVALID_STATE")) is InvalidStateError


def test_errors_pickle() -> None:
    for error in (errors.RoomFull("max 10"), StagecastError("X", "y"), error_for("NEW")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.code, copy.message) == (error.code, error.message)
