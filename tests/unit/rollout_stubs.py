"""HTTP stubs that speak the protocols the rollout controller uses, for tests that run the real
`corral rollout` process: Ray's Serve REST API (`GET`/`PUT /api/serve/applications/`, answers
validated against Ray's own `ApplicationDetails` model in ray/serve/schema.py), Prometheus'
instant-query API (`GET /api/v1/query`) and an OpenAI chat endpoint that enforces an API key.
"""

from __future__ import annotations

import copy
from urllib.parse import parse_qs, urlparse

from http_stub import JsonHttpStub


class _Server(JsonHttpStub):
    def __init__(self, handle):
        self.requests: list[tuple[str, str, dict]] = []
        super().__init__(handle)


class StubServe(_Server):
    """One Serve application whose submitted config is applied at once: every deployment
    HEALTHY, the ingress running the submitted user_config, each LLM deployment running its
    `min_replicas` (at least `running[arm]` if set). `status[arm]` overrides a deployment's status."""

    def __init__(self, serve_config: dict):
        self.config = copy.deepcopy(serve_config)
        self.status: dict[str, str] = {}
        self.running: dict[str, int] = {}
        self.puts = 0
        super().__init__(self._handle)

    def _handle(self, method, path, headers, body):
        self.requests.append((method, path, body))
        if urlparse(path).path != "/api/serve/applications/":
            return 404, {"error": path}
        with self.lock:
            if method == "PUT":
                self.config = copy.deepcopy(body)
                self.puts += 1
                return 200, {}
            return 200, {"applications": {a["name"]: self.app(a) for a in self.config["applications"]}}

    def app(self, cfg: dict) -> dict:
        from ray.serve.schema import ApplicationDetails

        from corral.serving.app import INGRESS_DEPLOYMENT, llm_deployment_name, route_weights
        from corral.serving.shadow import route_shadow

        deployments = {}

        def add(name, n, user_config=None, status=None):
            dc = {"name": name, **({"user_config": user_config} if user_config is not None else {})}
            deployments[name] = {
                "name": name, "status": status or "HEALTHY", "status_trigger": "CONFIG_UPDATE_COMPLETED",
                "message": "", "deployment_config": dc, "target_num_replicas": n, "required_resources": {"CPU": 1},
                "replicas": [{"replica_id": f"{name}-{i}", "state": "RUNNING", "start_time_s": 1.0} for i in range(n)],
            }

        shadow = route_shadow(cfg)
        add(INGRESS_DEPLOYMENT, 1, {"routes": route_weights(cfg), **({"shadow": shadow} if shadow else {})})
        overrides = {d["name"]: d for d in cfg.get("deployments") or []}
        for arm in cfg["args"]["fleet"]["arms"]:
            name = llm_deployment_name(arm["name"])
            floor = ((overrides.get(name) or {}).get("autoscaling_config") or {}).get("min_replicas")
            n = floor if floor is not None else (arm.get("replicas") or {}).get("min", 1)
            status = self.status.get(arm["name"])
            n = 0 if status in ("UNHEALTHY", "DEPLOY_FAILED") else max(n, self.running.get(arm["name"], 0))
            add(name, n, status=status)
        app = {"name": cfg["name"], "route_prefix": "/", "docs_path": None, "status": "RUNNING", "message": "",
               "last_deployed_time_s": 1.0, "source": "declarative", "deployments": deployments,
               "external_scaler_enabled": False, "deployed_app_config": cfg}
        ApplicationDetails.model_validate(app)
        return app


class StubPrometheus(_Server):
    """Answers every instant query with one sample of `value` (request counts, gate values)."""

    def __init__(self, value: float = 100.0):
        self.value = value
        super().__init__(self._handle)

    def _handle(self, method, path, headers, body):
        u = urlparse(path)
        self.requests.append((method, path, body))
        if u.path != "/api/v1/query":
            return 404, {"status": "error", "error": path}
        query = parse_qs(u.query).get("query", [""])[0]
        return 200, {"status": "success", "data": {"resultType": "vector",
                                                   "result": [{"metric": {"q": query[:20]}, "value": [1.0, str(self.value)]}]}}


class StubOpenAI(_Server):
    """`POST /v1/chat/completions` answering `reply`; 401 in OpenAI's error format without the right key."""

    def __init__(self, key: str, reply: str = "The capital of France is Paris."):
        self.key, self.reply = key, reply
        super().__init__(self._handle)

    def _handle(self, method, path, headers, body):
        self.requests.append((method, path, {"auth": headers.get("Authorization"), **(body or {})}))
        if headers.get("Authorization") != f"Bearer {self.key}":
            return 401, {"error": {"message": "Invalid API key", "type": "invalid_request_error",
                                   "param": None, "code": "invalid_api_key"}}
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": path, "type": "invalid_request_error", "param": None, "code": None}}
        return 200, {"id": "x", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": self.reply}}]}
