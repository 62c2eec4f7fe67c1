"""The local stack: WebSocket gateway, SNS, mock LLM and chat page on this machine, no Docker."""
