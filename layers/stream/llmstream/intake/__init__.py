"""What the message function does: accept a client message, apply the limits, route the
model, publish."""
