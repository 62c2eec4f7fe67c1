"""Helpers for driving the stream function in one process: SNS events built from
events/stream-sns.json, and the frames it posted, read back from moto's Management API."""

from __future__ import annotations

import json
from urllib.parse import quote, unquote

from moto.apigatewaymanagementapi.models import (
    ApiGatewayManagementApiBackend,
    apigatewaymanagementapi_backends,
)

from tests.conftest import load_event, load_handler

FRAMES_TABLE = "frames"


def prepare_stream_env(aws, mock_llm, monkeypatch):
    """The stream function's world: the tables, the mock LLM, no batching delay."""
    monkeypatch.setenv("LLM_BASE_URL", mock_llm.base_url)
    monkeypatch.setenv("MIN_FRAME_INTERVAL_MS", "0")
    mock_llm.reset()
    return aws


def record_closes(monkeypatch) -> list[str]:
    """moto forgets a connection's data on DeleteConnection; keep it and record the close."""
    deleted: list[str] = []
    monkeypatch.setattr(
        ApiGatewayManagementApiBackend,
        "delete_connection",
        lambda self, connection_id: deleted.append(unquote(connection_id)),
    )
    return deleted


def sns_event(prompt: str | None = None, **changes) -> dict:
    event = load_event("stream-sns.json")
    document = json.loads(event["Records"][0]["Sns"]["Message"])
    if prompt is not None:
        document["messages"] = [{"role": "user", "content": prompt}]
    document.update(changes)
    event["Records"][0]["Sns"]["Message"] = json.dumps(document)
    return event


def envelope(event: dict) -> dict:
    return json.loads(event["Records"][0]["Sns"]["Message"])


def frames_posted(connection_id: str) -> list[dict]:
    # moto keys connections by the id as it appears in the URL path
    connections = apigatewaymanagementapi_backends["123456789012"]["us-east-1"].connections
    if quote(connection_id, safe="") not in connections:
        return []
    data = connections[quote(connection_id, safe="")].data.decode()
    decoder, frames, i = json.JSONDecoder(), [], 0
    while i < len(data):
        frame, i = decoder.raw_decode(data, i)
        frames.append(frame)
    return frames


def deltas_text(frames: list[dict]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


def run(event, context):
    return load_handler("stream").lambda_handler(event, context)
