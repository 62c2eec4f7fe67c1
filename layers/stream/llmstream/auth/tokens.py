"""Who may open a WebSocket: the $connect REQUEST authorizer's token checks.

Two modes: ``jwt`` verifies a JWT from an OIDC issuer such as Cognito against its JWKS (PyJWT),
``hmac`` verifies a token signed with a shared secret (mint one with
``python -m llmstream.auth mint --sub alice --ttl 3600``). The token comes from ``?token=`` or
from the ``Sec-WebSocket-Protocol`` header as ``bearer, <token>``. Tokens and secrets are never
logged; a refusal says only why, in a word.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

MODES = ("none", "jwt", "hmac")
JWT_ALGORITHMS = ["RS256", "ES256"]
MAX_TOKEN_LENGTH = 8192
BEARER_SUBPROTOCOL = "bearer"
HMAC_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
PRINCIPAL_PATTERN = re.compile(r"^[\x21-\x7e]{1,256}$")
"""A principal id travels in logs, keys and SNS messages: printable ASCII, no spaces."""


class Denied(Exception):
    """The token is missing or not acceptable; ``reason`` is one word, safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# A NamedTuple like Settings: the cold start (docs/architecture.md).
class AuthSettings(NamedTuple):
    """The authorizer's configuration, read from its environment once (``from_env``)."""

    mode: str = "none"
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwks_url: str = ""
    hmac_secret_name: str = ""

    @property
    def jwks(self) -> str:
        """Cognito and most OIDC issuers publish their keys here when no URL is given."""
        return self.jwks_url or f"{self.jwt_issuer.rstrip('/')}/.well-known/jwks.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuthSettings:
        env = os.environ if env is None else env
        return cls(
            mode=(env.get("AUTH_MODE") or "none").strip().lower(),
            jwt_issuer=env.get("AUTH_JWT_ISSUER", ""),
            jwt_audience=env.get("AUTH_JWT_AUDIENCE", ""),
            jwks_url=env.get("AUTH_JWKS_URL", ""),
            hmac_secret_name=env.get("AUTH_HMAC_SECRET_NAME", ""),
        )


@dataclass(frozen=True)
class Principal:
    id: str
    claims: Mapping[str, Any]


# --------------------------------------------------------------------------- the token


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if isinstance(key, str) and key.lower() == name.lower() and isinstance(value, str):
            return value
    return None


def _offered_subprotocols(headers: Mapping[str, Any] | None) -> list[str]:
    value = _header(headers, "Sec-WebSocket-Protocol") or ""
    return [p.strip() for p in value.split(",") if p.strip()]


def token_from_request(event: Mapping[str, Any]) -> str | None:
    """``?token=...``, else the subprotocol after ``bearer`` in Sec-WebSocket-Protocol."""
    query = event.get("queryStringParameters")
    if isinstance(query, Mapping):
        token = query.get("token")
        if isinstance(token, str) and token:
            return token
    offered = _offered_subprotocols(
        event.get("headers") if isinstance(event.get("headers"), Mapping) else None
    )
    if BEARER_SUBPROTOCOL in offered:
        i = offered.index(BEARER_SUBPROTOCOL)
        if i + 1 < len(offered):
            return offered[i + 1]
    return None


def chosen_subprotocol(headers: Mapping[str, Any] | None) -> str | None:
    """The subprotocol $connect must echo: a client that offered ``bearer`` gets it back, or
    its browser would drop the connection."""
    return BEARER_SUBPROTOCOL if BEARER_SUBPROTOCOL in _offered_subprotocols(headers) else None


# --------------------------------------------------------------------------- HMAC tokens


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise Denied("malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Denied("malformed") from None


def _signature(secret: bytes, payload: str) -> bytes:
    return hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()


def mint_hmac_token(secret: str | bytes, sub: str, *, ttl: int, now: float | None = None) -> str:
    """base64url(JSON {sub, iat, exp}) + "." + base64url(HMAC-SHA256(secret, that first part))."""
    if not PRINCIPAL_PATTERN.fullmatch(sub):
        raise ValueError("sub must be 1-256 printable ASCII characters without spaces")
    key = secret.encode() if isinstance(secret, str) else secret
    issued = int(time.time() if now is None else now)
    body = json.dumps({"sub": sub, "iat": issued, "exp": issued + ttl}, separators=(",", ":"))
    payload = _b64encode(body.encode())
    return f"{payload}.{_b64encode(_signature(key, payload))}"


def verify_hmac_token(token: str, secret: str | bytes, *, now: float | None = None) -> Principal:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise Denied("misconfigured")
    if not HMAC_TOKEN_PATTERN.fullmatch(token):
        raise Denied("malformed")
    payload, signature = token.split(".")
    # Compare encoded forms: base64url has several spellings of the same bytes (the last
    # character's spare bits), and a token is accepted only in the one we mint.
    if not hmac.compare_digest(signature.encode(), _b64encode(_signature(key, payload)).encode()):
        raise Denied("signature")
    try:
        claims = json.loads(_b64decode(payload))
    except (ValueError, RecursionError):
        raise Denied("malformed") from None
    if not isinstance(claims, dict):
        raise Denied("malformed")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise Denied("malformed")
    if exp <= (time.time() if now is None else now):
        raise Denied("expired")
    return Principal(_principal_id(claims), claims)


# --------------------------------------------------------------------------- JWTs


@cache
def jwks_client(url: str) -> Any:
    """One JWKS client per container: it caches the issuer's keys between invocations."""
    import jwt

    return jwt.PyJWKClient(url, cache_keys=True, lifespan=3600, timeout=5)


def verify_jwt(
    token: str,
    settings: AuthSettings,
    *,
    signing_key: Callable[[str], Any] | None = None,
) -> Principal:
    """Verify signature (RS256/ES256 only), expiry, issuer and audience.

    Cognito access tokens carry ``client_id`` instead of ``aud``; either may match the audience.
    """
    import jwt

    if not settings.jwt_issuer or not settings.jwt_audience:
        raise Denied("misconfigured")
    try:
        key = (
            signing_key or (lambda t: jwks_client(settings.jwks).get_signing_key_from_jwt(t).key)
        )(token)
        claims = jwt.decode(
            token,
            key,
            algorithms=JWT_ALGORITHMS,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iss", "sub"], "verify_aud": False},
            leeway=30,
        )
    except jwt.ExpiredSignatureError:
        raise Denied("expired") from None
    except jwt.InvalidIssuerError:
        raise Denied("issuer") from None
    except jwt.PyJWKClientConnectionError:
        raise Denied("jwks_unreachable") from None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, RecursionError):
        raise Denied("invalid") from None
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if settings.jwt_audience not in audiences and claims.get("client_id") != settings.jwt_audience:
        raise Denied("audience")
    return Principal(_principal_id(claims), claims)


def _principal_id(claims: Mapping[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not PRINCIPAL_PATTERN.fullmatch(sub):
        raise Denied("subject")
    return sub


# --------------------------------------------------------------------------- the authorizer


def authorize(
    event: Mapping[str, Any],
    settings: AuthSettings,
    *,
    hmac_secret: Callable[[], str] | None = None,
    signing_key: Callable[[str], Any] | None = None,
) -> Principal:
    """The caller's principal, or Denied."""
    token = token_from_request(event)
    if not token:
        raise Denied("missing")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Denied("malformed")
    if settings.mode == "jwt":
        return verify_jwt(token, settings, signing_key=signing_key)
    if settings.mode == "hmac":
        if hmac_secret is None:
            raise Denied("misconfigured")
        return verify_hmac_token(token, hmac_secret())
    # "none" means no authorizer is attached; one that runs anyway lets nobody in.
    raise Denied("misconfigured")


def allow_policy(principal: Principal, method_arn: str) -> dict[str, Any]:
    """The authorizer's answer: Invoke on this route only, and the principal for later events."""
    return {
        "principalId": principal.id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": method_arn}
            ],
        },
        "context": {"sub": principal.id},
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """python -m llmstream.auth mint --sub alice [--ttl 3600] [--secret-name NAME]

    The secret comes from $AUTH_HMAC_SECRET, or else from Secrets Manager (--secret-name, or
    $AUTH_HMAC_SECRET_NAME). Prints the token only.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmstream.auth")
    commands = parser.add_subparsers(dest="command", required=True)
    mint = commands.add_parser("mint", help="mint an HMAC token for AuthMode=hmac")
    mint.add_argument("--sub", required=True, help="the principal id the token names")
    mint.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    mint.add_argument("--secret-name", default=os.environ.get("AUTH_HMAC_SECRET_NAME", ""))
    args = parser.parse_args(argv)
    secret = os.environ.get("AUTH_HMAC_SECRET")
    if not secret:
        if not args.secret_name:
            parser.error("set AUTH_HMAC_SECRET, or name the secret with --secret-name")
        import boto3

        secret = boto3.client("secretsmanager").get_secret_value(SecretId=args.secret_name)[
            "SecretString"
        ]
    try:
        print(mint_hmac_token(secret, args.sub, ttl=args.ttl))
    except ValueError as exc:
        parser.error(str(exc))
    return 0
