"""AWS clients, created on first use and reused for the life of the container."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def aws(service: str) -> Any:
    import boto3

    return boto3.client(service)
