"""What the dead-letter function does: tell the client of a request no invocation will answer."""
