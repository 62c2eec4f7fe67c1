"""What the stream function does: claim a prompt, call the model, stream the answer, settle,
replay."""
