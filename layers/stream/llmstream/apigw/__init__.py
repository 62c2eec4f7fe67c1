"""The API Gateway Management API connection: posting frames to one client, and closing it."""
