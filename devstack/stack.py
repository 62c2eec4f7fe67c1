"""The whole service on this machine: moto (DynamoDB, SNS, SQS, Secrets Manager), the mock LLM,
the functions in their containers, the WebSocket gateway with its Management API, the chat page.

``with LocalStack(StackConfig(ws_port=0, http_port=0)) as stack: ...`` runs it on a background
event loop; ``python -m devstack`` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from .gateway import Gateway, GatewayConfig
from .management import ManagementApi
from .routes import FUNCTIONS, STREAM_FILTER_ATTRIBUTE
from .runtime import ACCOUNT_ID, REGION, FunctionSpec, Invocation, Runtime, function_arn
from .sns import Fanout, Subscription, patch_moto

log = logging.getLogger("devstack")

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "llm-stream-local"
HMAC_SECRET_NAME = "llm-stream/ws-token-hmac"

TEMPLATE_DEFAULTS: dict[str, str] = {
    # template.yaml's Globals environment with its Parameters' defaults; tests keep them in sync.
    "LLM_PROVIDER": "openai",
    "LLM_MODEL": "gpt-4o-mini",
    "ALLOWED_MODELS": "",
    "LLM_API_KEY_SECRET": "llm-stream/openai-api-key",
    "MAX_TOKENS": "1024",
    "SYSTEM_PROMPT": "You are a helpful assistant. Answer concisely.",
    "LLM_STALL_TIMEOUT_SECONDS": "30",
    "LLM_RETRY_BUDGET_SECONDS": "20",
    "MAX_PROMPT_BYTES": "16384",
    "MIN_FRAME_INTERVAL_MS": "50",
    "DEADLINE_MARGIN_SECONDS": "10",
    "STREAM_LEASE_SECONDS": "30",
    "CONNECTION_TTL_SECONDS": "7200",
    "LOG_CONTENT": "false",
    "RATE_LIMIT_PER_MINUTE": "20",
    "MAX_CONCURRENT_STREAMS": "1",
    "PRINCIPAL_RATE_LIMIT_PER_MINUTE": "60",
    "HISTORY_MAX_TURNS": "20",
    "HISTORY_MAX_TOKENS": "4000",
    "HISTORY_TTL_SECONDS": "86400",
    "RESUME_TTL_SECONDS": "600",
    "RESUME_GRACE_SECONDS": "30",
    "CONTROL_POLL_MS": "200",
    "AUTH_MODE": "none",
    "POWERTOOLS_SERVICE_NAME": "llm-stream",
    "POWERTOOLS_METRICS_NAMESPACE": "LlmStream",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "POWERTOOLS_LOGGER_LOG_EVENT": "false",
}

BEDROCK_MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
"""template.yaml's BedrockModelId default: the model the Bedrock fan-out serves."""

TABLES: dict[str, dict[str, Any]] = {
    # env var -> key schema, as template.yaml declares the tables
    "CONNECTIONS_TABLE": {"keys": [("connectionId", "S", "HASH")], "ttl": "expiresAt"},
    "IDEMPOTENCY_TABLE": {"keys": [("id", "S", "HASH")], "ttl": "expiration"},
    "CONVERSATIONS_TABLE": {
        "keys": [("conversationId", "S", "HASH"), ("turn", "N", "RANGE")],
        "ttl": "expiresAt",
    },
    "FRAMES_TABLE": {
        "keys": [("requestId", "S", "HASH"), ("seq", "N", "RANGE")],
        "ttl": "expiresAt",
    },
}


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One record of the SQS event Lambda's event source mapping builds from a message."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on the running loop; port 0 picks a free one. Returns the runner and port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    return runner, server.sockets[0].getsockname()[1]


@dataclass
class StackConfig:
    """Knobs of the local stack. Ports 0 pick free ones (tests); None means "from the env"."""

    host: str = "127.0.0.1"
    ws_port: int = 3001
    http_port: int = 3000
    stage: str = "local"
    root: Path = ROOT
    llm_base_url: str | None = None  # None: $LLM_BASE_URL, or else the mock LLM
    llm_api_key: str | None = None  # None: $LLM_API_KEY or $OPENAI_API_KEY, or else a dummy
    llm_model: str | None = None  # None: $LLM_MODEL, or else the template's default
    auth_mode: str | None = None  # None: $AUTH_MODE, or else "none"
    idle_timeout: float = 10 * 60.0
    max_connection_life: float = 2 * 60 * 60.0
    post_latency: float = 0.0
    throttle_every: int = 0
    isolation: str = "process"  # or "thread" (handlers in this process; for debugging)
    prewarm: bool = True  # one warm container per function at start, like provisioned concurrency
    retry_delays: tuple[float, ...] = (1.0, 2.0)  # Lambda waits ~1 and ~2 minutes
    max_concurrency: dict[str, int] = field(default_factory=dict)
    async_retries: dict[str, int] = field(default_factory=dict)  # e.g. StreamMaxRetryAttempts
    env: dict[str, str] = field(default_factory=dict)  # extra/overridden function environment
    extra_functions: list[FunctionSpec] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)  # besides StreamFunction's
    static_dir: Path | None = None  # None: devstack/static
    bedrock_fanout: bool = False  # EnableBedrockFanout=true, with the mock Bedrock endpoint
    # How long a dead letter the dead-letter function hands back waits before it comes round
    # again (the template's StreamDeadLetterQueue says 360 s; shorter here, so one sees it).
    dead_letter_visibility: int = 30
    mock_llm_log: bool = False


class LocalStack:
    """Starts and stops everything; a context manager. Its URLs are known once started."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.ws_url = self.http_url = self.management_url = self.moto_url = ""
        self.mock_llm: Any = None
        self.mock_bedrock: Any = None
        self.llm_base_url = ""
        self.topic_arn = self.dead_letter_queue_url = self.failed_queue_url = ""
        self.hmac_secret = ""
        self.tables: dict[str, str] = {}
        self.runtime: Runtime | None = None
        self.gateway: Gateway | None = None
        self.management: ManagementApi | None = None
        self.fanout: Fanout | None = None
        self._moto: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._internal_url = ""
        self._poller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from moto.server import ThreadedMotoServer

        cfg = self.config
        patch_moto()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._moto = ThreadedMotoServer(ip_address=cfg.host, port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self._reset_moto()  # moto's state is per process: an earlier stack's tables live on

        base_url = (
            cfg.llm_base_url if cfg.llm_base_url is not None else os.environ.get("LLM_BASE_URL", "")
        )
        if not base_url:
            from .mock_llm import MockLLM

            self.mock_llm = MockLLM(cfg.host, 0, log=cfg.mock_llm_log).start()
            base_url = self.mock_llm.base_url
        self.llm_base_url = base_url
        if self.bedrock_fanout:
            from .mock_bedrock import MockBedrock

            self.mock_bedrock = MockBedrock(cfg.host).start()
        self._create_resources()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="devstack", daemon=True)
        self._thread.start()
        self.call(self._astart())
        assert self.fanout is not None
        sns = self.client("sns")
        for sub in self.subscriptions():
            self.fanout.subscribe(sns, self.topic_arn, sub, self._internal_url)

    def stop(self) -> None:
        """Close sockets (their $disconnect runs), stop the functions, then the servers."""
        try:
            if self._loop is not None and self._loop.is_running():
                try:
                    self.call(self._astop(), timeout=30)
                finally:
                    self._loop.call_soon_threadsafe(self._loop.stop)
                    assert self._thread is not None
                    self._thread.join(timeout=10)
            if self._loop is not None and not self._loop.is_running():
                self._loop.close()
            self._loop = None
            if self.mock_llm is not None:
                self.mock_llm.stop()
            if self.mock_bedrock is not None:
                self.mock_bedrock.stop()
            if self._moto is not None:
                self._reset_moto()
                self._moto.stop()
                self._moto = None
        finally:  # even on a second Ctrl-C: never leave containers behind
            if self.runtime is not None:
                self.runtime.kill()

    # ------------------------------------------------------------------ AWS resources (moto)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.moto_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def _reset_moto(self) -> None:
        request = urllib.request.Request(self.moto_url + "/moto-api/reset", method="POST")
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10):
            pass

    def _create_resources(self) -> None:
        dynamodb = self.client("dynamodb")
        for env_name, table in TABLES.items():
            name = f"{PREFIX}-{env_name.removesuffix('_TABLE').lower()}"
            dynamodb.create_table(
                TableName=name,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": k, "AttributeType": t} for k, t, _ in table["keys"]
                ],
                KeySchema=[{"AttributeName": k, "KeyType": kind} for k, _, kind in table["keys"]],
            )
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": table["ttl"], "Enabled": True},
            )
            self.tables[env_name] = name
        self.topic_arn = self.client("sns").create_topic(Name=f"{PREFIX}-prompts")["TopicArn"]
        sqs = self.client("sqs")
        self.failed_queue_url = sqs.create_queue(QueueName=f"{PREFIX}-stream-failed")["QueueUrl"]
        failed_arn = sqs.get_queue_attributes(
            QueueUrl=self.failed_queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        self.dead_letter_queue_url = sqs.create_queue(
            QueueName=f"{PREFIX}-stream-dlq",
            Attributes={
                "VisibilityTimeout": str(self.config.dead_letter_visibility),
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": failed_arn, "maxReceiveCount": 5}
                ),
            },
        )["QueueUrl"]
        key = (
            self.config.llm_api_key
            or os.environ.get("LLM_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
            or "sk-local-dummy-key"
        )
        self.client("secretsmanager").create_secret(
            Name=self.function_env()["LLM_API_KEY_SECRET"], SecretString=key
        )
        if self.auth_mode == "hmac":
            self.hmac_secret = os.environ.get("AUTH_HMAC_SECRET") or secrets.token_urlsafe(32)
            self.client("secretsmanager").create_secret(
                Name=HMAC_SECRET_NAME, SecretString=self.hmac_secret
            )

    def mint_token(self, sub: str = "local-user", ttl: int = 3600) -> str:
        """A token the authorizer accepts in hmac mode (what `llmstream.auth mint` prints)."""
        layer = str(self.config.root / "layers" / "stream")
        if layer not in sys.path:
            sys.path.insert(0, layer)
        from llmstream.auth import mint_hmac_token

        if not self.hmac_secret:
            raise RuntimeError("the stack is not running with auth mode 'hmac'")
        return mint_hmac_token(self.hmac_secret, sub, ttl=ttl)

    def function_env(self) -> dict[str, str | None]:
        """The functions' environment: the template's Globals, then local wiring."""
        cfg = self.config
        env: dict[str, str | None] = dict(TEMPLATE_DEFAULTS)
        env.update(
            {
                **self.tables,
                "PROMPT_TOPIC_ARN": self.topic_arn,
                # DeadLetterFunction's own in the template; here for every function, so that
                # thread isolation (one process, one settings cache) works too.
                "FAILED_QUEUE_URL": self.failed_queue_url,
                "LLM_BASE_URL": self.llm_base_url,
                "LLM_MODEL": cfg.llm_model
                or os.environ.get("LLM_MODEL")
                or TEMPLATE_DEFAULTS["LLM_MODEL"],
                "AUTH_MODE": self.auth_mode,
                "AUTH_HMAC_SECRET_NAME": HMAC_SECRET_NAME,
                "MANAGEMENT_ENDPOINT_TEMPLATE": "http://{domainName}/{stage}",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                # Never a real account or a real key in a local function's environment.
                "AWS_PROFILE": None,
                "AWS_DEFAULT_PROFILE": None,
                "AWS_SECURITY_TOKEN": None,
                "OPENAI_API_KEY": None,
                "LLM_API_KEY": None,
            }
        )
        env.update(cfg.env)
        return env

    @property
    def bedrock_fanout(self) -> bool:
        """Like the template's BedrockFanout condition: asked for, and not already on Bedrock."""
        return self.config.bedrock_fanout and self.function_env()["LLM_PROVIDER"] != "bedrock"

    def function_overrides(self, name: str) -> dict[str, str]:
        """One function's own Environment on top of the Globals, as template.yaml sets it."""
        if not self.bedrock_fanout:
            return {}
        if name == "message":  # clients may pick the Bedrock model; it is routed there
            allowed = self.function_env()["ALLOWED_MODELS"] or ""
            return {
                "ALLOWED_MODELS": ",".join([allowed, BEDROCK_MODEL_ID]),
                "MODEL_PROVIDERS": f"{BEDROCK_MODEL_ID}=bedrock",
            }
        if name == "bedrock-stream":
            return {
                "LLM_PROVIDER": "bedrock",
                "LLM_MODEL": BEDROCK_MODEL_ID,
                "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": self.mock_bedrock.endpoint_url,
            }
        return {}

    def models(self) -> list[str]:
        """The models a client may ask for, the default first (what the chat page offers)."""
        env = {**self.function_env(), **self.function_overrides("message")}
        default = env["LLM_MODEL"] or ""
        allowed = [m.strip() for m in (env["ALLOWED_MODELS"] or "").split(",") if m.strip()]
        return [default, *(m for m in allowed if m != default)]

    @property
    def auth_mode(self) -> str:
        return self.config.auth_mode or os.environ.get("AUTH_MODE") or "none"

    def function_specs(self) -> list[FunctionSpec]:
        cfg = self.config
        specs = []
        for name, defaults in FUNCTIONS.items():
            code_dir = cfg.root / "functions" / name
            if name == "authorizer" and self.auth_mode == "none":
                continue
            if not (code_dir / "app.py").exists():
                log.warning("functions/%s/app.py is missing; its routes will fail", name)
                continue
            specs.append(
                FunctionSpec(
                    name=name,
                    code_dir=code_dir,
                    layers=(cfg.root / "layers" / "stream",),
                    function_name=f"{PREFIX}-{defaults.logical_id}",
                    timeout=defaults.timeout,
                    memory_mb=defaults.memory_mb,
                    async_retries=cfg.async_retries.get(name, defaults.async_retries),
                    max_concurrency=cfg.max_concurrency.get(name, 100 if name == "stream" else 10),
                    env=self.function_overrides(name),
                    isolation=cfg.isolation,
                )
            )
        stream = next((s for s in specs if s.name == "stream"), None)
        if self.bedrock_fanout and stream is not None:  # BedrockStreamFunction: the same code
            specs.append(
                replace(
                    stream,
                    name="bedrock-stream",
                    function_name=f"{PREFIX}-BedrockStreamFunction",
                    max_concurrency=cfg.max_concurrency.get("bedrock-stream", 100),
                    env=self.function_overrides("bedrock-stream"),
                )
            )
        return specs + list(cfg.extra_functions)

    def subscriptions(self) -> list[Subscription]:
        provider = self.function_env()["LLM_PROVIDER"]
        subscriptions = [Subscription("stream", {STREAM_FILTER_ATTRIBUTE: [provider]})]
        if self.bedrock_fanout:
            subscriptions.append(
                Subscription("bedrock-stream", {STREAM_FILTER_ATTRIBUTE: ["bedrock"]})
            )
        return [*subscriptions, *self.config.subscriptions]

    async def _dead_letter(self, inv: Invocation) -> None:
        """Lambda's on-failure destination: the event and its last error, to the SQS queue."""
        spec = self.runtime.specs[inv.function] if self.runtime else None
        record = {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "requestContext": {
                "requestId": inv.request_id,
                "functionArn": function_arn(spec.lambda_name if spec else inv.function),
                "condition": "RetriesExhausted",
                "approximateInvokeCount": inv.attempt + 1,
            },
            "requestPayload": inv.event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": inv.error,
        }
        await asyncio.to_thread(
            self.client("sqs").send_message,
            QueueUrl=self.dead_letter_queue_url,
            MessageBody=json.dumps(record),
        )

    async def _consume_dead_letters(self) -> None:
        """The DeadLetterEventSource mapping: poll the dead-letter queue, hand each batch to the
        dead-letter function, delete what it settled; the rest comes round again."""
        sqs = self.client("sqs")
        arn = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{PREFIX}-stream-dlq"
        while True:
            try:
                received = await asyncio.to_thread(
                    sqs.receive_message,
                    QueueUrl=self.dead_letter_queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=1,
                    AttributeNames=["All"],
                )
            except Exception:  # moto is stopping
                await asyncio.sleep(1)
                continue
            messages = received.get("Messages", [])
            if not messages:
                continue
            event = {"Records": [sqs_record(m, arn) for m in messages]}
            try:
                result = await self.runtime.invoke("deadletter", event) if self.runtime else None
            except Exception as exc:  # the whole batch comes round again
                log.warning("the dead-letter function failed: %s", exc)
                continue
            failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
            for message in messages:
                if message["MessageId"] not in failed:
                    await asyncio.to_thread(
                        sqs.delete_message,
                        QueueUrl=self.dead_letter_queue_url,
                        ReceiptHandle=message["ReceiptHandle"],
                    )

    # ------------------------------------------------------------------ servers (on the loop)

    async def _serve(self, app: web.Application, port: int) -> int:
        runner, port = await serve(app, self.config.host, port)
        self._runners.append(runner)
        return port

    async def _astart(self) -> None:
        cfg = self.config
        self.runtime = Runtime(
            self.function_specs(),
            env=self.function_env(),
            retry_delays=cfg.retry_delays,
            on_async_failure=self._dead_letter,
        )
        self.fanout = Fanout(self.runtime)
        internal = web.Application()
        self.runtime.add_routes(internal)
        self.fanout.add_routes(internal)
        self._internal_url = f"http://{cfg.host}:{await self._serve(internal, 0)}"

        self.gateway = Gateway(
            GatewayConfig(
                host=cfg.host,
                port=cfg.ws_port,
                stage=cfg.stage,
                idle_timeout=cfg.idle_timeout,
                max_connection_life=cfg.max_connection_life,
                auth_enabled=self.auth_mode != "none",
                post_latency=cfg.post_latency,
                throttle_every=cfg.throttle_every,
            ),
            self.runtime.invoke,
        )
        self.management = ManagementApi(self.gateway)
        app = web.Application()
        self.management.add_routes(app)
        self.gateway.add_routes(app)
        ws_port = await self._serve(app, cfg.ws_port)
        self.gateway.bound(ws_port)
        self.ws_url = f"ws://{cfg.host}:{ws_port}"
        self.management_url = f"http://{cfg.host}:{ws_port}/{cfg.stage}"
        self.http_url = f"http://{cfg.host}:{await self._serve(self._page_app(), cfg.http_port)}/"
        await self.runtime.start(self._internal_url, prewarm=cfg.prewarm)
        if "deadletter" in self.runtime.specs:
            self._poller = asyncio.get_running_loop().create_task(self._consume_dead_letters())

    def _page_app(self) -> web.Application:
        static = self.config.static_dir or Path(__file__).resolve().parent / "static"
        app = web.Application()

        async def config_json(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "wsUrl": self.ws_url,
                    "stage": self.config.stage,
                    "authMode": self.auth_mode,
                    "mockLlm": self.mock_llm is not None,
                    "models": self.models(),
                }
            )

        async def index(request: web.Request) -> web.StreamResponse:
            page = static / "index.html"
            if page.exists():
                return web.FileResponse(page)
            return web.Response(
                text=f"No chat page here yet; connect a WebSocket client to {self.ws_url}\n"
            )

        app.router.add_get("/config.json", config_json)
        app.router.add_get("/", index)
        if static.is_dir():
            app.router.add_static("/", static)
        return app

    async def _astop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self.gateway is not None:
            for conn in list(self.gateway.connections.values()):
                conn.close_soon(1001, "Going away")
            try:
                await asyncio.wait_for(self.gateway.drain(), 10)
            except TimeoutError:
                log.warning("some $disconnect invocations did not finish")
        if self.runtime is not None:
            await self.runtime.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    # ------------------------------------------------------------------ for tests and tools

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the stack's loop from another thread and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def invocations(self, function: str | None = None) -> list[Invocation]:
        assert self.runtime is not None
        return [i for i in list(self.runtime.invocations) if function in (None, i.function)]

    def wait_for_invocations(
        self, predicate: Callable[[list[Invocation]], Any], timeout: float = 10.0
    ) -> Any:
        """Block until ``predicate(all invocations so far)`` holds (TimeoutError otherwise)."""
        assert self.runtime is not None
        return self.call(self.runtime.wait_for(predicate, timeout))

    def published(self) -> list[dict[str, Any]]:
        """Every message published to the prompt topic so far (read from moto's backend)."""
        from moto.sns.models import sns_backends

        topic = sns_backends[ACCOUNT_ID][REGION].topics[self.topic_arn]
        return [
            {"MessageId": m[0], "Message": m[1], "MessageAttributes": m[3]}
            for m in list(topic.sent_notifications)
        ]
