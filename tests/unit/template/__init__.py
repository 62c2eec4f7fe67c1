"""template.yaml's tests by concern: lint and build, IAM, routes, configuration, events,
scanners."""
