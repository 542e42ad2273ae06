"""Ray Serve LLM's stock OpenAI ingress over an engine that another application already runs.

For `router_overhead.py --engine shared`: the plain ingress and corral's ingress then send to the
same LLMServer replica, so the comparison holds everything but the ingress fixed (two engine
instances on two cores differ by several percent on their own). The ingress is built as
`build_openai_app` builds it (`make_fastapi_ingress(OpenAiIngress)`, `get_deployment_options`);
only its handle points at the existing deployment instead of a new one.

Serve config: `import_path: _shared_ingress:build`, runtime_env `working_dir` = this folder,
args `{"llm_config": {...}, "app_name": ..., "deployment": ...}`.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm.ingress import OpenAiIngress


class SharedEngineIngress(OpenAiIngress):
    """`OpenAiIngress` whose model handle is looked up by name when the replica starts."""

    def __init__(self, app_name: str, deployment: str, model_cards: dict[str, Any], **kwargs: Any) -> None:
        from ray import serve

        (model_id,) = model_cards
        handle = serve.get_deployment_handle(deployment, app_name=app_name)
        super().__init__({model_id: handle}, model_cards, **kwargs)


def build(args: dict[str, Any]):
    from ray import serve
    from ray.serve.llm import LLMConfig
    from ray.serve.llm.ingress import make_fastapi_ingress

    from corral.serving._ray_compat import to_model_metadata

    config = LLMConfig(**args["llm_config"])
    options = OpenAiIngress.get_deployment_options([config])
    return serve.deployment(make_fastapi_ingress(SharedEngineIngress), **options).bind(
        app_name=args["app_name"], deployment=args["deployment"],
        model_cards={config.model_id: to_model_metadata(config.model_id, config)},
    )
