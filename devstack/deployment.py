"""template.yaml as the local stack deploys it: the parameters its config sets, each function's
spec and environment (the template's, on top of the local wiring), the routes and subscribers;
and, beside it, the functions and routes of the SAM apps of ``extra_templates``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .config import PREFIX, StackConfig
from .extra_apps import app_env, load_app, with_app_routes
from .gateway import GatewayConfig
from .resources import moto_client
from .routes import Route, template_routes
from .runtime import ACCOUNT_ID, REGION, FunctionSpec
from .sns import Subscription
from .template import Function, Template

log = logging.getLogger("devstack")

BEDROCK_MODEL_ID = Template().parameters["BedrockModelId"]
"""template.yaml's BedrockModelId default: the model the Bedrock fan-out serves."""


def local_env(moto_url: str) -> dict[str, str | None]:
    """What every local function gets: AWS is moto, with dummy keys, and the Management API
    is the local gateway (None unsets a variable of this process)."""
    return {
        "MANAGEMENT_ENDPOINT_TEMPLATE": "http://{domainName}/{stage}",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
        "AWS_ENDPOINT_URL": moto_url,
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


class LocalDeployment:
    """The template with this stack's parameters, its resources named and found locally: AWS
    at moto's ``moto_url``, the LLM at ``llm_base_url`` (``mock_llm``'s when the stack runs
    it), and Bedrock at ``mock_bedrock`` when the fan-out is on."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.moto_url = self.llm_base_url = ""
        self.mock_llm: Any = None
        self.mock_bedrock: Any = None
        self._templates: dict[str, Template] = {}
        self._extra: dict[str, list[Template]] = {}
        self._as_written: Template | None = None  # at its parameters' defaults

    def client(self, service: str) -> Any:
        """A boto3 client of this deployment's AWS (moto)."""
        return moto_client(service, self.moto_url)

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
        env = local_env(self.moto_url)
        if name is not None:
            function = self.functions()[name]
            env.update(function.environment)
            if function.environment.get("LLM_PROVIDER") == "bedrock" and self.mock_bedrock:
                env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = self.mock_bedrock.endpoint_url
        env.update({k: v for k, v in self.config.env.items() if k not in self._carried()})
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
            code_dir = cfg.root / "functions" / function.folder
            if not (code_dir / "app.py").exists():
                log.warning("functions/%s/app.py is missing; its routes will fail", function.folder)
                continue
            concurrency = 100 if function.logical_id in subscribed else 10
            env = self.function_env(function.name)
            specs.append(function_spec(cfg, self.template(), function, code_dir, env, concurrency))
        for app in self.extra_templates():
            for function in app.functions().values():
                if function.name in {s.name for s in specs}:
                    raise ValueError(f"{app.path}: a function {function.name!r} runs already")
                env = app_env(app, function.logical_id, local_env(self.moto_url), cfg.env)
                code_dir = app.path.parent / function.code_uri
                specs.append(function_spec(cfg, app, function, code_dir, env, 10))
        return specs + list(cfg.extra_functions)

    def extra_templates(self) -> list[Template]:
        """The SAM apps of ``extra_templates``, deployed beside template.yaml (extra_apps)."""
        key = f"{self.moto_url} {self.llm_base_url}"
        if key not in self._extra:
            self._extra[key] = [load_app(p, self.template()) for p in self.config.extra_templates]
        return self._extra[key]

    def routes(self) -> dict[str, Route]:
        """The API's routes, to the functions by their short names: template.yaml's, and
        those the extra apps add to its API."""
        return with_app_routes(template_routes(self.template()), self.extra_templates())

    def subscriptions(self) -> list[Subscription]:
        functions = self.template().functions()
        subscriptions = [
            Subscription(functions[s.function].name, s.filter_policy, s.filter_policy_scope)
            for s in self.template().subscriptions()
        ]
        return [*subscriptions, *self.config.subscriptions]

    def gateway_config(self) -> GatewayConfig:
        """The gateway as the config and the template set it: the routes, auth on or off."""
        cfg = self.config
        return GatewayConfig(
            host=cfg.host,
            port=cfg.ws_port,
            stage=cfg.stage,
            idle_timeout=cfg.idle_timeout,
            max_connection_life=cfg.max_connection_life,
            auth_enabled=self.auth_mode != "none",
            post_latency=cfg.post_latency,
            throttle_every=cfg.throttle_every,
            routes=self.routes(),
        )


def function_spec(
    cfg: StackConfig,
    template: Template,
    function: Function,
    code_dir: Path,
    env: dict[str, str | None],
    concurrency: int,
) -> FunctionSpec:
    """How the runtime runs one function of ``template``, its code in ``code_dir``."""
    name = function.name
    return FunctionSpec(
        name=name,
        code_dir=code_dir,
        layers=(cfg.root / "layers" / "stream",),
        handler=function.handler,
        function_name=template.name(function.logical_id),
        timeout=function.timeout,
        memory_mb=function.memory_mb,
        async_retries=cfg.async_retries.get(name, function.async_retries),
        max_concurrency=cfg.max_concurrency.get(name, concurrency),
        env={k: v for k, v in env.items() if v is not None},
        isolation=cfg.isolation,
    )
