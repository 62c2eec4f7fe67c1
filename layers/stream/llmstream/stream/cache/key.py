"""What makes two requests the same answer: the cache key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

KEY_VERSION = 1
"""Part of every key: a change to what the key covers starts a fresh cache."""


def cache_scope(principal_id: str | None, *, shared: bool) -> str | None:
    """Whose answers a request may be given: its principal's, or everyone's when the cache is
    shared (RESPONSE_CACHE_SHARED). None, no caching, for an anonymous caller of a cache that
    is not shared: two anonymous clients may be two people."""
    if shared:
        return "shared"
    return None if principal_id is None else f"principal:{principal_id}"


def cache_key(
    scope: str,
    *,
    provider: str,
    model: str,
    messages: Sequence[Mapping[str, str]],
    max_tokens: int,
    sampling: Mapping[str, object] | None = None,
) -> str:
    """SHA-256 of everything that shapes the answer: the provider and model, the messages as the
    model gets them (the system prompt and any conversation history included), max tokens and
    any sampling options, under the scope. Canonical JSON, so equal requests give equal keys."""
    canonical = json.dumps(
        {
            "v": KEY_VERSION,
            "scope": scope,
            "provider": provider,
            "model": model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "maxTokens": max_tokens,
            "sampling": dict(sampling or {}),
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
