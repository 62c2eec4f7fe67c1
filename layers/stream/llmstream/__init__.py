"""Shared code for streaming an LLM answer to an API Gateway WebSocket connection (the Lambda layer)."""
