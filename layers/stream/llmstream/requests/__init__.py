"""A request's one record (claim, lease, cancel, attach, settle), its stored frames, the
conversation history and the stream slots."""
