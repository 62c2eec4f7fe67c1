"""SAM apps that the local stack deploys beside template.yaml (``python -m devstack --function``,
StackConfig.extra_templates): a stack of one's own, such as examples/custom-handler, whose
functions answer the routes it adds to template.yaml's API.

An app's template is read like template.yaml: a parameter that template.yaml has too takes its
value (StageName, LlmModel, ...), ``MainStackName`` is the local stack's name, and
``!ImportValue`` finds template.yaml's exports, so its function gets the local topic and tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .config import PREFIX
from .routes import Route, template_routes
from .runtime import ACCOUNT_ID, REGION
from .template import Template


def load_app(given: Path, main: Template) -> Template:
    """The app at ``given`` (its template.yaml, or the folder holding one), deployed beside
    ``main`` as ``<stack>-<folder>``."""
    path = Path(given) / "template.yaml" if Path(given).is_dir() else Path(given)
    declared = Template(path).raw.get("Parameters", {})
    values = {**main.parameters, "MainStackName": main.stack_name}
    return Template(
        path,
        parameters={k: v for k, v in values.items() if k in declared},
        stack_name=f"{PREFIX}-{path.resolve().parent.name}",
        region=REGION,
        account_id=ACCOUNT_ID,
        endpoint_url=main.endpoint_url,
        imports=main.exports(),
    )


def app_env(
    app: Template, logical_id: str, wiring: Mapping[str, str | None], env: Mapping[str, str]
) -> dict[str, str | None]:
    """An app's function's environment: the local ``wiring``, its own, then the stack's ``env``
    (but what the app's parameters carry: those took template.yaml's values, ``env``'s too)."""
    carried = app.variable_parameters()
    return {
        **wiring,
        **app.environment(logical_id),
        **{k: v for k, v in env.items() if k not in carried},
    }


def with_app_routes(routes: dict[str, Route], apps: list[Template]) -> dict[str, Route]:
    """``routes`` and those the apps add to the API; a route key can be taken once, as in API
    Gateway."""
    out = dict(routes)
    for app in apps:
        for key, route in template_routes(app).items():
            if key in out:
                raise ValueError(f"{app.path}: the API has a route {key!r} already")
            out[key] = route
    return out
