"""``python -m devstack``: run the local stack until Ctrl-C. ``python -m devstack chat`` and other
subcommands run ``devstack.<name>:main`` when that module exists.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import signal
import sys
import threading
from pathlib import Path

from .stack import LocalStack, StackConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ws-port", type=int, default=3001, help="WebSocket API (default 3001)")
    parser.add_argument("--http-port", type=int, default=3000, help="chat page (default 3000)")
    parser.add_argument("--stage", default="local")
    parser.add_argument(
        "--auth-mode",
        choices=["none", "jwt", "hmac"],
        default=None,
        help="default: $AUTH_MODE or none",
    )
    parser.add_argument("--idle-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument(
        "--post-latency", type=float, default=0.0, help="seconds added to every PostToConnection"
    )
    parser.add_argument(
        "--throttle-every", type=int, default=0, help="every Nth PostToConnection fails with 429"
    )
    parser.add_argument("--isolation", choices=["process", "thread"], default="process")
    parser.add_argument(
        "--bedrock-fanout",
        action="store_true",
        help="like EnableBedrockFanout=true: a second stream function serves the Bedrock model "
        "from a mock Bedrock endpoint",
    )
    parser.add_argument(
        "--function",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="a SAM app (its folder or template.yaml) whose functions run beside the stack's, "
        "on the routes it adds to the API, e.g. --function examples/custom-handler",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="function environment variable, e.g. --set MIN_FRAME_INTERVAL_MS=0",
    )
    parser.add_argument("--quiet", action="store_true", help="hide the stack's own log lines")
    return parser


def _subcommand(argv: list[str]) -> int | None:
    """Dispatch ``python -m devstack NAME ...`` to ``devstack.NAME:main`` if it exists."""
    if not argv or argv[0].startswith("-"):
        return None
    name = argv[0]
    if importlib.util.find_spec(f"devstack.{name}") is None:
        sys.exit(f"python -m devstack: no subcommand {name!r}")
    module = importlib.import_module(f"devstack.{name}")
    result = module.main(argv[1:])
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = _subcommand(argv)
    if code is not None:
        return code
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    env = dict(item.split("=", 1) for item in args.set)
    config = StackConfig(
        host=args.host,
        ws_port=args.ws_port,
        http_port=args.http_port,
        stage=args.stage,
        auth_mode=args.auth_mode,
        idle_timeout=args.idle_timeout,
        post_latency=args.post_latency,
        throttle_every=args.throttle_every,
        isolation=args.isolation,
        bedrock_fanout=args.bedrock_fanout,
        env=env,
        extra_templates=args.function,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    stack = LocalStack(config)
    try:
        stack.start()
        llm = (
            f"mock LLM at {stack.llm_base_url} (script answers with a '#mock tokens=N rate=R' line)"
            if stack.mock_llm
            else f"{stack.llm_base_url} (key from LLM_API_KEY/OPENAI_API_KEY)"
        )
        print(f"Chat page: {stack.http_url}  WebSocket: {stack.ws_url}", flush=True)
        for template in stack.extra_templates():
            routes = ", ".join(sorted(template.routes()))
            print(f"{template.path.parent.name}: its routes {routes} on the same API", flush=True)
        print(
            f"LLM: {llm}\nManagement API: {stack.management_url}  AWS (moto): {stack.moto_url}",
            flush=True,
        )
        if stack.mock_bedrock is not None:
            bedrock = stack.models()[-1]
            print(f"Bedrock: {bedrock} at {stack.mock_bedrock.endpoint_url} (mock)", flush=True)
        if stack.auth_mode == "hmac":
            token = stack.mint_token()
            print(f"Auth: hmac; connect with {stack.ws_url}/?token={token}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping... (Ctrl-C again to stop at once)", flush=True)
        try:
            stack.stop()
        except KeyboardInterrupt:
            print("Stopped without waiting for open connections.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
