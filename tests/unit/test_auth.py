"""The $connect authorizer: JWTs from an OIDC issuer (keys served by a local JWKS endpoint) and
HMAC tokens (secret in moto's Secrets Manager). Every bad token is a 401, and no token or
secret ever reaches the logs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from llmstream.auth import tokens as auth
from moto import mock_aws

from tests.conftest import load_event, load_handler

ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Example"
AUDIENCE = "llm-stream-client"
HMAC_SECRET_NAME = "llm-stream/ws-token-hmac"
HMAC_SECRET = "a-long-random-signing-key-for-tests"
METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:x7k2m9q4pd/prod/$connect"


# --------------------------------------------------------------------------- an OIDC issuer


class Issuer:
    """Signs tokens with its keys and serves their public halves as a JWKS document."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.jwks = {
            "keys": [
                {
                    **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key())),
                    "kid": "rsa-1",
                    "use": "sig",
                    "alg": "RS256",
                },
                {
                    **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key())),
                    "kid": "ec-1",
                    "use": "sig",
                    "alg": "ES256",
                },
            ]
        }
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                body = json.dumps(issuer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, alg: str = "RS256", key=None, kid: str | None = None, **claims) -> str:
        now = int(time.time())
        payload = {"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signer = key or (self.rsa if alg == "RS256" else self.ec)
        default_kid = "rsa-1" if alg == "RS256" else "ec-1"
        return jwt.encode(payload, signer, algorithm=alg, headers={"kid": kid or default_kid})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    yield i
    i.server.shutdown()


@pytest.fixture
def jwt_mode(issuer, monkeypatch):
    monkeypatch.setenv("AUTH_MODE", "jwt")
    monkeypatch.setenv("AUTH_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("AUTH_JWT_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("AUTH_JWKS_URL", issuer.url)
    return load_handler("authorizer")


@pytest.fixture
def hmac_mode(monkeypatch):
    from aws_lambda_powertools.utilities import parameters

    with mock_aws():
        boto3.client("secretsmanager").create_secret(
            Name=HMAC_SECRET_NAME, SecretString=HMAC_SECRET
        )
        parameters.clear_caches()
        monkeypatch.setenv("AUTH_MODE", "hmac")
        monkeypatch.setenv("AUTH_HMAC_SECRET_NAME", HMAC_SECRET_NAME)
        yield load_handler("authorizer")
        parameters.clear_caches()


def request(token: str | None = None, *, protocol: str | None = None) -> dict:
    event = load_event("authorizer-request.json")
    event["queryStringParameters"] = {"token": token} if token is not None else None
    event["multiValueQueryStringParameters"] = {"token": [token]} if token is not None else None
    if protocol is not None:
        event["headers"]["Sec-WebSocket-Protocol"] = protocol
    return event


def allowed(handler, event, context) -> str:
    """The principal id of an Allow; fails the test on anything else."""
    result = handler.lambda_handler(event, context)
    [statement] = result["policyDocument"]["Statement"]
    assert statement == {
        "Action": "execute-api:Invoke",
        "Effect": "Allow",
        "Resource": event["methodArn"],
    }
    assert result["context"] == {"sub": result["principalId"]}
    return result["principalId"]


def refused(handler, event, context) -> None:
    with pytest.raises(Exception, match="^Unauthorized$"):
        handler.lambda_handler(event, context)


# --------------------------------------------------------------------------- JWT mode


def test_a_valid_jwt_in_the_query_string_is_allowed_as_its_subject(
    issuer, jwt_mode, lambda_context
):
    assert allowed(jwt_mode, request(issuer.token()), lambda_context) == "user-42"


def test_an_es256_jwt_is_allowed(issuer, jwt_mode, lambda_context):
    assert (
        allowed(jwt_mode, request(issuer.token("ES256", sub="user-7")), lambda_context) == "user-7"
    )


def test_a_cognito_access_token_matches_the_audience_by_client_id(issuer, jwt_mode, lambda_context):
    token = issuer.token(aud=None, client_id=AUDIENCE, token_use="access")
    assert allowed(jwt_mode, request(token), lambda_context) == "user-42"


def test_a_jwt_in_sec_websocket_protocol_after_bearer_is_allowed(issuer, jwt_mode, lambda_context):
    event = request(None, protocol=f"bearer, {issuer.token()}")
    assert allowed(jwt_mode, event, lambda_context) == "user-42"


def test_the_issuers_keys_are_fetched_once_per_container(issuer, jwt_mode, lambda_context):
    before = issuer.fetches
    for _ in range(3):
        allowed(jwt_mode, request(issuer.token()), lambda_context)
    assert issuer.fetches - before <= 1


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "wrong audience",
        "wrong issuer",
        "bad signature",
        "alg none",
        "hs256 with the public key",
        "unknown kid",
        "no subject",
        "no expiry",
        "audience not a string",
        "not a jwt",
        "missing",
    ],
)
def test_a_bad_jwt_is_refused(issuer, jwt_mode, lambda_context, case):
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    public_pem = issuer.rsa.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    tokens = {
        "expired": lambda: issuer.token(exp=now - 120, iat=now - 720),
        "wrong audience": lambda: issuer.token(aud="someone-else"),
        "wrong issuer": lambda: issuer.token(iss="https://evil.example.com/"),
        "bad signature": lambda: issuer.token(key=other_key),
        "alg none": lambda: jwt.encode(
            {"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600},
            None,
            algorithm="none",
            headers={"kid": "rsa-1"},
        ),
        "hs256 with the public key": lambda: _hs256(public_pem, now),
        "unknown kid": lambda: issuer.token(kid="nope"),
        "no subject": lambda: issuer.token(sub=None),
        "no expiry": lambda: issuer.token(exp=None),
        "audience not a string": lambda: issuer.token(aud=42),
        "not a jwt": lambda: "not-a-jwt",
        "missing": lambda: None,
    }
    event = request(tokens[case]())
    with pytest.raises(auth.Denied) as denied:
        auth.authorize(event, jwt_mode.settings)
    assert denied.value.reason == REASONS.get(case, "invalid")
    refused(jwt_mode, event, lambda_context)


REASONS = {
    "expired": "expired",
    "wrong audience": "audience",
    "audience not a string": "audience",
    "wrong issuer": "issuer",
    "missing": "missing",
}


def _hs256(secret: bytes, now: int) -> str:
    """Key confusion: an HMAC token whose 'secret' is the issuer's public key."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64(
        json.dumps({"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}).encode()
    )
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def test_the_sample_event_with_a_fake_signature_is_refused(jwt_mode, lambda_context):
    refused(jwt_mode, load_event("authorizer-request.json"), lambda_context)


def test_an_unreachable_jwks_endpoint_refuses_rather_than_fails(
    issuer, lambda_context, monkeypatch
):
    monkeypatch.setenv("AUTH_MODE", "jwt")
    monkeypatch.setenv("AUTH_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("AUTH_JWT_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("AUTH_JWKS_URL", "http://127.0.0.1:9/.well-known/jwks.json")
    refused(load_handler("authorizer"), request(issuer.token()), lambda_context)


def test_jwt_mode_without_an_audience_refuses_everyone(issuer, lambda_context, monkeypatch):
    monkeypatch.setenv("AUTH_MODE", "jwt")
    monkeypatch.setenv("AUTH_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("AUTH_JWT_AUDIENCE", "")
    monkeypatch.setenv("AUTH_JWKS_URL", issuer.url)
    refused(load_handler("authorizer"), request(issuer.token()), lambda_context)


def test_the_jwks_url_defaults_to_the_issuers_well_known_path():
    settings = auth.AuthSettings(mode="jwt", jwt_issuer=ISSUER + "/")
    assert settings.jwks == ISSUER + "/.well-known/jwks.json"


# --------------------------------------------------------------------------- HMAC mode


def test_a_valid_hmac_token_is_allowed_as_its_subject(hmac_mode, lambda_context):
    token = auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60)
    assert allowed(hmac_mode, request(token), lambda_context) == "alice"


@pytest.mark.parametrize(
    "make",
    [
        lambda: auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=-1),
        lambda: auth.mint_hmac_token("another-secret", "alice", ttl=60),
        lambda: _tampered(auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60)),
        lambda: _respelled(auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60)),
        lambda: auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60) + ".x",
        lambda: auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60).split(".")[0],
        lambda: "",
        lambda: "%%%.%%%",
    ],
    ids=[
        "expired",
        "wrong secret",
        "tampered",
        "respelled",
        "three parts",
        "unsigned",
        "empty",
        "garbage",
    ],
)
def test_a_bad_hmac_token_is_refused(hmac_mode, lambda_context, make):
    refused(hmac_mode, request(make()), lambda_context)


def _tampered(token: str) -> str:
    payload, signature = token.split(".")
    body = json.loads(auth._b64decode(payload))
    body["sub"] = "mallory"
    return f"{auth._b64encode(json.dumps(body).encode())}.{signature}"


def _respelled(token: str) -> str:
    """The same signature bytes in another base64url spelling: the last character of 32
    bytes' encoding carries two spare bits, and flipping one of them decodes identically."""
    payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]
    assert auth._b64decode(respelled) == auth._b64decode(signature)
    return f"{payload}.{respelled}"


def test_the_mint_command_prints_a_token_the_authorizer_accepts(
    hmac_mode, lambda_context, monkeypatch, capsys
):
    monkeypatch.setenv("AUTH_HMAC_SECRET", HMAC_SECRET)
    assert auth.main(["mint", "--sub", "bob", "--ttl", "300"]) == 0
    token = capsys.readouterr().out.strip()
    assert allowed(hmac_mode, request(token), lambda_context) == "bob"


def test_the_mint_command_reads_the_secret_from_secrets_manager(hmac_mode, monkeypatch, capsys):
    monkeypatch.delenv("AUTH_HMAC_SECRET", raising=False)
    auth.main(["mint", "--sub", "carol", "--secret-name", HMAC_SECRET_NAME])
    token = capsys.readouterr().out.strip()
    assert auth.verify_hmac_token(token, HMAC_SECRET).id == "carol"


def test_a_missing_signing_secret_refuses_everyone(lambda_context, monkeypatch):
    with mock_aws():
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()
        monkeypatch.setenv("AUTH_MODE", "hmac")
        monkeypatch.setenv("AUTH_HMAC_SECRET_NAME", "no-such-secret")
        token = auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60)
        refused(load_handler("authorizer"), request(token), lambda_context)


def test_an_authorizer_running_with_auth_mode_none_lets_nobody_in(lambda_context, monkeypatch):
    monkeypatch.setenv("AUTH_MODE", "none")
    token = auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60)
    refused(load_handler("authorizer"), request(token), lambda_context)


def test_tokens_and_secrets_never_reach_the_logs(
    issuer, hmac_mode, lambda_context, logs, monkeypatch
):
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")  # even if someone turns this on
    good = auth.mint_hmac_token(HMAC_SECRET, "alice", ttl=60)
    allowed(hmac_mode, request(good), lambda_context)
    bad = auth.mint_hmac_token("wrong-secret", "alice", ttl=60)
    refused(hmac_mode, request(bad), lambda_context)
    out = logs.getvalue()
    assert "connection allowed" in out and "connection refused" in out
    for secret in (good, bad, good.split(".")[1], HMAC_SECRET):
        assert secret not in out


# --------------------------------------------------------------------------- $connect


def test_connect_stores_the_authorized_principal(aws, lambda_context):
    event = load_event("connect-authorized.json")
    load_handler("connect").lambda_handler(event, lambda_context)
    item = aws.dynamodb.get_item(
        TableName=aws.table, Key={"connectionId": {"S": event["requestContext"]["connectionId"]}}
    )["Item"]
    assert item["principalId"] == {"S": "user-42"}


def test_the_principal_travels_from_the_authorizer_into_the_sns_message(aws, lambda_context):
    event = load_event("send-message.json")
    event["requestContext"]["authorizer"] = {"principalId": "user-42"}
    load_handler("message").lambda_handler(event, lambda_context)
    [notification] = aws.published()
    assert json.loads(notification["Message"])["principalId"] == "user-42"


def test_connect_echoes_the_bearer_subprotocol_a_client_offered(aws, lambda_context):
    event = load_event("connect-authorized.json")
    event["headers"]["Sec-WebSocket-Protocol"] = "bearer, eyJhbGciOi.e30.sig"
    response = load_handler("connect").lambda_handler(event, lambda_context)
    assert response == {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "bearer"}}


def test_connect_without_a_subprotocol_answers_without_one(aws, lambda_context):
    response = load_handler("connect").lambda_handler(load_event("connect.json"), lambda_context)
    assert response == {"statusCode": 200}
