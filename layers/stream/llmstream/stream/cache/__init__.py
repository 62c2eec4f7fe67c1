"""The opt-in result cache (RESPONSE_CACHE_TTL_SECONDS): an answer that ended with ``stop`` is
kept, and a request for the very same answer is streamed it instead of calling the model; an
identical request that comes while the first still streams follows that one stream
(docs/cache.md)."""

from .flight import CachingProvider
from .key import cache_key, cache_scope

__all__ = ["CachingProvider", "cache_key", "cache_scope"]
