"""The StreamLayer's package: stream an LLM answer to an API Gateway WebSocket connection."""
