"""Who may open a WebSocket: the $connect authorizer's token checks, and the subprotocol echo."""

from .tokens import (
    AuthSettings,
    Denied,
    Principal,
    allow_policy,
    authorize,
    chosen_subprotocol,
    mint_hmac_token,
    verify_hmac_token,
)

__all__ = [
    "AuthSettings",
    "Denied",
    "Principal",
    "allow_policy",
    "authorize",
    "chosen_subprotocol",
    "mint_hmac_token",
    "verify_hmac_token",
]
