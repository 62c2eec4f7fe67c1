"""Property-based fuzzing of what the Internet can send: any body to the message handler, any
query string and headers to the authorizer. Every answer is a well-formed frame (or the
documented 401), and nothing invalid is ever published."""

from __future__ import annotations

import base64
import json

import boto3
import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from llmstream.auth import tokens as auth
from llmstream.core import protocol, schema
from llmstream.core.envelope import parse_envelope
from moto import mock_aws

from tests.conftest import load_event, load_handler

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FRAME = jsonschema.Draft202012Validator(
    {"$ref": "#/$defs/serverFrame", "$defs": schema.SCHEMA["$defs"]}
)

# --------------------------------------------------------------------------- bodies

any_text = st.text(
    alphabet=st.one_of(
        st.characters(),  # every plane, combining marks, RTL, zero-width, emoji
        st.characters(categories=["Cs"]),  # lone surrogates, as a JSON "\ud800" escape decodes
        st.sampled_from(["\x00", "\u202e", "\ufeff", "\u200b", "💥", "\\", '"']),
    ),
    max_size=64,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=25,
)
request_ids = st.one_of(st.from_regex(protocol.REQUEST_ID_PATTERN, fullmatch=True), any_text)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", ""]), "content": any_text}
    ),
    max_size=4,
)
send_messages = st.fixed_dictionaries(
    {"action": st.sampled_from(["sendMessage", "SENDMESSAGE", "cancel", ""]) | json_values},
    optional={
        "requestId": request_ids | json_values,
        "prompt": any_text | json_values,
        "messages": messages | json_values,
        "model": st.sampled_from(["gpt-4o-mini", "gpt-4o", "gpt-9"]) | any_text,
        "keepOpen": st.booleans() | json_values,
        "conversationId": request_ids,
    },
)

ids = st.from_regex(protocol.REQUEST_ID_PATTERN, fullmatch=True)
prompts = any_text.filter(lambda t: t.strip())
near_valid = st.fixed_dictionaries(
    {"action": st.just("sendMessage")},
    optional={
        "requestId": ids,
        "model": st.sampled_from(["gpt-4o-mini", "gpt-4o"]),
        "keepOpen": st.booleans(),
        "conversationId": ids,
    },
).flatmap(
    lambda base: st.one_of(
        st.builds(lambda p: {**base, "prompt": p}, prompts),
        st.builds(
            lambda history, last: {
                **base,
                "messages": [*history, {"role": "user", "content": last}],
            },
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant"]), "content": prompts}
                ),
                max_size=3,
            ),
            prompts,
        ),
    )
)


def _json(value, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


bodies = st.one_of(
    st.none(),
    st.just(""),
    any_text,
    st.binary(max_size=256).map(lambda b: b.decode("latin-1")),
    st.builds(_json, json_values, st.booleans()),
    st.builds(_json, send_messages, st.booleans()),
    st.builds(_json, near_valid, st.booleans()),
    st.builds(_json, near_valid, st.booleans()),
    st.integers(1, 100_000).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.integers(1, 20_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(16 * 1024 - 64, 200 * 1024).map(  # around and far past the size limits
        lambda n: json.dumps({"action": "sendMessage", "prompt": "x" * n})
    ),
)


@pytest.fixture
def message_handler(aws, monkeypatch):
    # Limits on, but high: the fuzzer may send hundreds of valid prompts on one connection.
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "1000000")
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "1000000")
    return load_handler("message")


def test_any_body_gets_a_well_formed_frame_and_only_accepted_requests_are_published(
    aws, message_handler, lambda_context
):
    template = load_event("send-message.json")
    seen = {"accepted": 0, "error": 0}

    @FUZZ
    @given(body=bodies, base64_encoded=st.booleans())
    @example(body='{"action":"sendMessage","prompt":"hi"}', base64_encoded=False)
    @example(body='{"action":"sendMessage","prompt":"\\ud800 hi"}', base64_encoded=False)
    @example(body='{"action":"sendMessage","prompt":"hi","model":"\\udfff"}', base64_encoded=False)
    @example(body='{"action":"\\ud800"}', base64_encoded=False)
    @example(body="[" * 60_000 + "]" * 60_000, base64_encoded=False)
    def check(body, base64_encoded):
        event = json.loads(json.dumps(template))
        if body is None:
            del event["body"]
        elif base64_encoded:
            event["body"] = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = body
        response = message_handler.lambda_handler(event, lambda_context)
        assert response["statusCode"] == 200
        raw = response["body"]
        raw.encode("utf-8")  # sendable: no lone surrogate reaches the socket
        frame = json.loads(raw)
        FRAME.validate(frame)
        assert frame["type"] in ("accepted", "error")
        seen[frame["type"]] += 1
        published = aws.published()
        # An accepted cancel publishes nothing; every other accepted message publishes once.
        a_cancel = _action(body) == "cancel"
        assert len(published) == (1 if frame["type"] == "accepted" and not a_cancel else 0)
        for notification in published:
            document = parse_envelope(notification["Message"])
            assert document.request_id == frame["requestId"]
            assert document.connection_id == event["requestContext"]["connectionId"]
            assert all(m["content"].strip() for m in document.messages)

    check()
    assert seen["accepted"] and seen["error"]  # both paths were exercised


def _action(body: str | None) -> object:
    try:
        doc = json.loads(body or "")
    except (ValueError, RecursionError):
        return None
    return doc.get("action") if isinstance(doc, dict) else None


# --------------------------------------------------------------------------- the authorizer

HMAC_SECRET = "fuzz-signing-key"
# Tokens are minted at fixed instants, so that a failing example replays byte for byte:
# one issued in 2100 is still valid today, one issued in 2023 with ttl <= 0 is expired.
LATER, EARLIER = 4_102_444_800, 1_700_000_000
subjects = st.from_regex(r"[A-Za-z0-9_.@|-]{1,40}", fullmatch=True)


@st.composite
def authorizer_requests(draw):
    """An event and the principal it must be allowed as (None: it must be refused)."""
    kind = draw(st.sampled_from(["valid", "expired", "wrong-secret", "tampered", "junk", "none"]))
    sub = draw(subjects)
    if kind == "valid":
        token = auth.mint_hmac_token(HMAC_SECRET, sub, ttl=600, now=LATER)
    elif kind == "expired":
        ttl = -draw(st.integers(0, 10**6))
        token = auth.mint_hmac_token(HMAC_SECRET, sub, ttl=ttl, now=EARLIER)
    elif kind == "wrong-secret":
        secret = draw(st.text(min_size=1).filter(lambda s: s != HMAC_SECRET))
        token = auth.mint_hmac_token(secret, sub, ttl=600, now=LATER)
    elif kind == "tampered":
        good = auth.mint_hmac_token(HMAC_SECRET, sub, ttl=600, now=LATER)
        i = draw(st.integers(0, len(good) - 1))
        swap = draw(st.sampled_from("AQgw-_.x"))
        token = good[:i] + swap + good[i + 1 :]
        kind = "valid" if token == good else kind
    elif kind == "junk":
        token = draw(any_text | st.builds(".".join, st.lists(any_text, max_size=4)))
    else:
        token = None
    where = draw(st.sampled_from(["query", "protocol"]))
    query = draw(st.none() | st.dictionaries(any_text.filter(lambda k: k != "token"), any_text))
    headers = draw(
        st.none()
        | st.dictionaries(
            any_text.filter(lambda k: k.lower() != "sec-websocket-protocol"), any_text, max_size=5
        )
    )
    if token is not None and where == "query":
        query = {**(query or {}), "token": token}
    if token is not None and where == "protocol":
        headers = {**(headers or {}), "sec-websocket-protocol": f"bearer, {token}"}
        if "," in token or token != token.strip() or not token:
            kind = "junk"  # a token that cannot survive the subprotocol list
    event = {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:x7k2m9q4pd/prod/$connect",
        "headers": headers,
        "queryStringParameters": query,
        "requestContext": load_event("authorizer-request.json")["requestContext"],
    }
    return event, sub if kind == "valid" else None


@pytest.fixture
def hmac_authorizer(monkeypatch):
    from aws_lambda_powertools.utilities import parameters

    with mock_aws():
        boto3.client("secretsmanager").create_secret(Name="fuzz/hmac", SecretString=HMAC_SECRET)
        parameters.clear_caches()
        monkeypatch.setenv("AUTH_MODE", "hmac")
        monkeypatch.setenv("AUTH_HMAC_SECRET_NAME", "fuzz/hmac")
        yield load_handler("authorizer")
        parameters.clear_caches()


def test_the_authorizer_allows_exactly_the_validly_signed_tokens(hmac_authorizer, lambda_context):
    @FUZZ
    @given(case=authorizer_requests())
    def check(case):
        event, principal = case
        try:
            result = hmac_authorizer.lambda_handler(event, lambda_context)
        except Exception as exc:  # the one documented failure: API Gateway's 401
            assert type(exc) is Exception and str(exc) == "Unauthorized"
            assert principal is None
            return
        assert principal is not None
        assert result["principalId"] == principal
        assert result["policyDocument"]["Statement"] == [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
        ]

    check()


def test_the_jwt_authorizer_refuses_every_forged_token(lambda_context, monkeypatch):
    from tests.unit.test_auth import AUDIENCE, ISSUER, Issuer

    issuer = Issuer()
    try:
        monkeypatch.setenv("AUTH_MODE", "jwt")
        monkeypatch.setenv("AUTH_JWT_ISSUER", ISSUER)
        monkeypatch.setenv("AUTH_JWT_AUDIENCE", AUDIENCE)
        monkeypatch.setenv("AUTH_JWKS_URL", issuer.url)
        handler = load_handler("authorizer")
        b64 = st.builds(lambda v: auth._b64encode(json.dumps(v).encode()), json_values)
        unsigned = auth._b64encode(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
        forged = st.one_of(
            any_text,
            st.builds(lambda h, p, s: f"{h}.{p}.{s}", b64, b64, b64),
            st.builds(lambda p: f"{unsigned}.{p}.", b64),
        )

        @FUZZ
        @given(token=forged)
        def check(token):
            event = load_event("authorizer-request.json")
            event["queryStringParameters"] = {"token": token}
            with pytest.raises(Exception, match="^Unauthorized$"):
                handler.lambda_handler(event, lambda_context)

        check()
    finally:
        issuer.server.shutdown()
