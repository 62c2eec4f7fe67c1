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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .gateway import Gateway, GatewayConfig
from .management import ManagementApi
from .routes import Route
from .runtime import ACCOUNT_ID, REGION, FunctionSpec, Invocation, Runtime, function_arn
from .sns import Fanout, Subscription, patch_moto
from .template import Function, Template, text

log = logging.getLogger("devstack")

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "llm-stream-local"
"""The local stack's name: its resources are ``llm-stream-local-<logical id>``."""

BEDROCK_MODEL_ID = Template().parameters["BedrockModelId"]
"""template.yaml's BedrockModelId default: the model the Bedrock fan-out serves."""

# SQS attributes the local queues take from template.yaml (moto ignores the rest).
QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


@dataclass
class Resources:
    """What ``create_resources`` made: local names by logical ID."""

    tables: dict[str, str] = field(default_factory=dict)
    topics: dict[str, str] = field(default_factory=dict)  # ARNs
    queues: dict[str, str] = field(default_factory=dict)  # URLs


def create_resources(
    template: Template, client: Callable[[str], Any], visibility: Mapping[str, int] | None = None
) -> Resources:
    """Create template.yaml's tables (keys, indexes, TTL), topics and queues (redrive
    policies, retention) with ``client(service)``; ``visibility`` overrides queues' timeouts."""
    made = Resources()
    dynamodb = client("dynamodb")
    for table in template.tables():
        dynamodb.create_table(**table.create_table_args())
        if table.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=table.name,
                TimeToLiveSpecification={"AttributeName": table.ttl_attribute, "Enabled": True},
            )
        made.tables[table.logical_id] = table.name
    for logical_id in template.resources("AWS::SNS::Topic"):
        topic = client("sns").create_topic(Name=template.name(logical_id))
        made.topics[logical_id] = topic["TopicArn"]
    for logical_id in template.queues():
        props = template.properties(logical_id)
        attributes = {k: text(props[k]) for k in QUEUE_ATTRIBUTES if k in props}
        if logical_id in (visibility or {}):
            attributes["VisibilityTimeout"] = str(visibility[logical_id])  # type: ignore[index]
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        queue = client("sqs").create_queue(
            QueueName=template.name(logical_id), Attributes=attributes
        )
        made.queues[logical_id] = queue["QueueUrl"]
    return made


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
    # template.yaml's parameters, like `sam deploy --parameter-overrides`
    parameters: dict[str, str] = field(default_factory=dict)
    # Function environment on top of the template's. A variable the template sets from a
    # parameter (MIN_FRAME_INTERVAL_MS from MinFrameIntervalMs) overrides that parameter.
    env: dict[str, str] = field(default_factory=dict)
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
        self.tables: dict[str, str] = {}  # by the variable naming it, e.g. FRAMES_TABLE
        self.resources = Resources()
        self._templates: dict[str, Template] = {}
        self._as_written: Template | None = None  # at its parameters' defaults
        self.runtime: Runtime | None = None
        self.gateway: Gateway | None = None
        self.management: ManagementApi | None = None
        self.fanout: Fanout | None = None
        self._moto: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._internal_url = ""
        self._pollers: list[asyncio.Task[None]] = []

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
        template = self.template()
        mappings = {queue for _, queue, _ in template.event_source_mappings()}
        self.resources = create_resources(
            template, self.client, dict.fromkeys(mappings, self.config.dead_letter_visibility)
        )
        self.tables = {
            variable: self.resources.tables[table]
            for variable, table in template.variables_naming("AWS::DynamoDB::Table").items()
        }
        (subscribed,) = {s.topic for s in template.subscriptions()}
        self.topic_arn = self.resources.topics[subscribed]
        (dead_letters,) = mappings
        self.dead_letter_queue_url = self.resources.queues[dead_letters]
        self.failed_queue_url = self.resources.queues[template.redrive_target(dead_letters) or ""]
        key = (
            self.config.llm_api_key
            or os.environ.get("LLM_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
            or "sk-local-dummy-key"
        )
        self.client("secretsmanager").create_secret(
            Name=template.parameters["LlmApiKeySecretName"], SecretString=key
        )
        if self.auth_mode == "hmac":
            self.hmac_secret = os.environ.get("AUTH_HMAC_SECRET") or secrets.token_urlsafe(32)
            self.client("secretsmanager").create_secret(
                Name=template.parameters["AuthHmacSecretName"], SecretString=self.hmac_secret
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

    # ------------------------------------------------------------------ template.yaml

    def template(self) -> Template:
        """template.yaml with this stack's parameters, its resources named and found locally."""
        key = f"{self.moto_url} {self.llm_base_url}"
        if key not in self._templates:
            self._templates[key] = Template(
                self.config.root / "template.yaml",
                parameters=self.parameters(),
                stack_name=PREFIX,
                region=REGION,
                account_id=ACCOUNT_ID,
                endpoint_url=self.moto_url or None,
            )
        return self._templates[key]

    def parameters(self) -> dict[str, str]:
        """The template's parameters as this stack sets them: the stage, the LLM (the mock
        unless told otherwise), the auth mode, the fan-out, then ``env`` and ``parameters``."""
        cfg = self.config
        model = cfg.llm_model or os.environ.get("LLM_MODEL")
        carried = self._carried()
        return {
            "StageName": cfg.stage,
            "AuthMode": cfg.auth_mode or os.environ.get("AUTH_MODE") or "none",
            "EnableBedrockFanout": "true" if cfg.bedrock_fanout else "false",
            **({"LlmModel": model} if model else {}),
            **({"LlmBaseUrl": self.llm_base_url} if self.llm_base_url else {}),
            **{carried[k]: v for k, v in cfg.env.items() if k in carried},
            **cfg.parameters,
        }

    def _carried(self) -> dict[str, str]:
        """Variable -> the parameter it carries, read off the template as written."""
        if self._as_written is None:
            self._as_written = Template(self.config.root / "template.yaml")
        return self._as_written.variable_parameters()

    def function_env(self, name: str | None = None) -> dict[str, str | None]:
        """The environment of function ``name`` (its short name, e.g. ``stream``): the local
        wiring, then its own from template.yaml, then ``env``. Without a name, the wiring alone,
        which every function gets (None unsets a variable of this process)."""
        cfg = self.config
        env: dict[str, str | None] = {
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
        if name is not None:
            function = self.functions()[name]
            env.update(function.environment)
            if function.environment.get("LLM_PROVIDER") == "bedrock" and self.mock_bedrock:
                env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = self.mock_bedrock.endpoint_url
        env.update({k: v for k, v in cfg.env.items() if k not in self._carried()})
        return env

    def functions(self) -> dict[str, Function]:
        """template.yaml's functions that this deployment has, by short name."""
        return {f.name: f for f in self.template().functions().values()}

    @property
    def bedrock_fanout(self) -> bool:
        """The template's BedrockFanout condition: asked for, and not already on Bedrock."""
        return self.template().condition("BedrockFanout")

    def models(self) -> list[str]:
        """The models a client may ask for, the default first (what the chat page offers)."""
        env = self.functions()["message"].environment
        default = env["LLM_MODEL"]
        allowed = [m.strip() for m in env.get("ALLOWED_MODELS", "").split(",") if m.strip()]
        return [default, *(m for m in allowed if m != default)]

    @property
    def auth_mode(self) -> str:
        return self.template().parameters["AuthMode"]

    def function_specs(self) -> list[FunctionSpec]:
        cfg = self.config
        specs = []
        subscribed = {s.function for s in self.template().subscriptions()}
        for function in self.template().functions().values():
            name, code_dir = function.name, cfg.root / "functions" / function.folder
            if not (code_dir / "app.py").exists():
                log.warning("functions/%s/app.py is missing; its routes will fail", function.folder)
                continue
            concurrency = 100 if function.logical_id in subscribed else 10
            specs.append(
                FunctionSpec(
                    name=name,
                    code_dir=code_dir,
                    layers=(cfg.root / "layers" / "stream",),
                    function_name=self.template().name(function.logical_id),
                    timeout=function.timeout,
                    memory_mb=function.memory_mb,
                    async_retries=cfg.async_retries.get(name, function.async_retries),
                    max_concurrency=cfg.max_concurrency.get(name, concurrency),
                    env={k: v for k, v in self.function_env(name).items() if v is not None},
                    isolation=cfg.isolation,
                )
            )
        return specs + list(cfg.extra_functions)

    def routes(self) -> dict[str, Route]:
        """The API's routes, to the functions by their short names."""
        functions = self.template().functions()
        return {
            key: Route(key, functions[route.function].name, route.two_way)
            for key, route in self.template().routes().items()
        }

    def subscriptions(self) -> list[Subscription]:
        functions = self.template().functions()
        subscriptions = [
            Subscription(functions[s.function].name, s.filter_policy, s.filter_policy_scope)
            for s in self.template().subscriptions()
        ]
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
        # A function of the template's has its own destination; an extra one, the stream's.
        function = self.functions().get(inv.function)
        destination = function.on_failure if function and function.on_failure else None
        queue = self.resources.queues[destination] if destination else self.dead_letter_queue_url
        await asyncio.to_thread(
            self.client("sqs").send_message, QueueUrl=queue, MessageBody=json.dumps(record)
        )

    async def _consume(self, function: str, queue: str, batch_size: int) -> None:
        """An SQS event source mapping (DeadLetterEventSource): poll the queue, hand each batch
        to the function, delete what it settled; the rest comes round again."""
        sqs = self.client("sqs")
        url, arn = self.resources.queues[queue], self.template().arn(queue)
        while True:
            try:
                received = await asyncio.to_thread(
                    sqs.receive_message,
                    QueueUrl=url,
                    MaxNumberOfMessages=batch_size,
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
                result = await self.runtime.invoke(function, event) if self.runtime else None
            except Exception as exc:  # the whole batch comes round again
                log.warning("the %s function failed: %s", function, exc)
                continue
            failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
            for message in messages:
                if message["MessageId"] not in failed:
                    await asyncio.to_thread(
                        sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
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
                routes=self.routes(),
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
        functions = self.template().functions()
        for function, queue, props in self.template().event_source_mappings():
            name = functions[function].name
            if name in self.runtime.specs:
                poll = self._consume(name, queue, int(props.get("BatchSize", 10)))
                self._pollers.append(asyncio.get_running_loop().create_task(poll))

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
        for poller in self._pollers:
            poller.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
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
