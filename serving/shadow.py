"""Shadow traffic: copies of a route's user requests sent to a candidate arm, answers discarded.

During a rollout's shadow stage (`rollout.shadow` in the fleet spec) the ingress receives, through
Serve's `user_config` like route weights, `{"shadow": {route: {"arm", "percent", "max_in_flight",
"timeout_s"}}}`. After a user's request has been routed to its arm, `Shadow.copy` decides whether
to copy it (a seeded hash of the user, else a coin per request: `percent`% of the route) and, if
so, sends the copy to the shadow arm in a background task and returns at once:

- the user's request is neither awaited by nor exposed to the copy: the copy is a deep copy of the
  request, its task is fire-and-forget, every exception in it is swallowed and counted;
- at most `max_in_flight` copies per route are in flight; a copy beyond that is dropped, never
  queued, and counted (`ray_corral_shadow_dropped_total{reason="full"}`); a copy unanswered after
  `timeout_s` is cancelled, on the candidate too (outcome `timeout`);
- the copy's answer is read to its end (streams included, so TTFT and inter-token latency are
  measured like the user's) and discarded; its outcome, latency, TTFT, ITL and tokens go to the
  `ray_corral_shadow_*` series (`cluster/metric_names.py`), never to the user series;
- quality on the golden subset: the setting may carry the rollout's golden rules (`golden`: a
  list of `{key, match, answers}`, `key` = `corral.common.golden.prompt_key` of the prompt).
  When a copied request's prompt (a completion's `prompt`, or a chat's last message when it is
  the user's) is one of them, the candidate's answer text is kept and scored with that rule, and
  the result counted (`ray_corral_shadow_golden_total{result="pass"|"fail"}`). Only those copies
  collect their text; the others are read and dropped as before.

No Ray import here: the ingress passes `send(body, call_method) -> Response` (Ray Serve LLM's own
request path to an arm) and the metrics object, so tests and benchmarks use stand-ins.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import re
import time
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from corral.cluster import metric_names as names
from corral.cluster.metric_names import ITL_BUCKETS_S, LATENCY_BUCKETS_S, TTFT_BUCKETS_S
from corral.common.golden import MATCH_RULES, prompt_key, score_reply
from corral.serving._ray_compat import ArmCalls

_CHOICE = re.compile(r'"choices":\s*\[\s*\{')  # a chunk with a token (not the usage-only chunk)
_USAGE = re.compile(r'"usage":\s*\{')
DROPPED_FULL = "full"    # max_in_flight copies were in flight on the route
DROPPED_ERROR = "error"  # the copy could not be prepared


@dataclass(frozen=True)
class GoldenRule:
    """How the candidate's answer to one golden prompt is judged (`corral.common.golden`)."""

    key: str
    """`prompt_key` of the golden prompt's text."""
    match: str
    answers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "match": self.match, "answers": list(self.answers)}


@dataclass(frozen=True)
class ShadowRoute:
    """One route's shadow setting (the ingress's user_config `shadow.<route>`)."""

    arm: str
    percent: float
    max_in_flight: int = 4
    timeout_s: float = 120.0
    golden: tuple[GoldenRule, ...] = ()
    """Golden prompts whose shadow answers are scored (empty: none are)."""

    @classmethod
    def parse(cls, route: str, raw: Any, arms: Iterable[str]) -> ShadowRoute:
        if not isinstance(raw, dict) or not isinstance(raw.get("arm"), str):
            raise ValueError(f"shadow.{route}: expected {{arm, percent, max_in_flight, timeout_s, golden}}, "
                             f"got {raw!r}")
        known = set(arms)
        if raw["arm"] not in known:
            raise ValueError(f"shadow.{route}.arm {raw['arm']!r} is not an arm; arms are {sorted(known)}")
        unknown = sorted(set(raw) - {"arm", "percent", "max_in_flight", "timeout_s", "golden"})
        if unknown:
            raise ValueError(f"shadow.{route}: unknown field(s) {unknown}")
        out = cls(arm=raw["arm"], percent=float(raw.get("percent", 0)), max_in_flight=int(raw.get("max_in_flight", 4)),
                  timeout_s=float(raw.get("timeout_s", 120.0)), golden=_parse_golden(route, raw.get("golden")))
        if not 0 <= out.percent <= 100 or out.max_in_flight < 1 or out.timeout_s <= 0:
            raise ValueError(f"shadow.{route}: need 0 <= percent <= 100, max_in_flight >= 1, timeout_s > 0; got {raw!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arm": self.arm, "percent": self.percent, "max_in_flight": self.max_in_flight,
                               "timeout_s": self.timeout_s}
        if self.golden:
            out["golden"] = [g.to_dict() for g in self.golden]
        return out

    def golden_rule(self, body: Any) -> GoldenRule | None:
        """The golden rule for this request's prompt, if it is a golden prompt."""
        if not self.golden:
            return None
        text = request_prompt(body)
        if text is None:
            return None
        key = prompt_key(text)
        return next((g for g in self.golden if g.key == key), None)


def _parse_golden(route: str, raw: Any) -> tuple[GoldenRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError(f"shadow.{route}.golden: expected a list of {{key, match, answers}}, got {type(raw).__name__}")
    rules = []
    for i, item in enumerate(raw):
        ok = (isinstance(item, dict) and isinstance(item.get("key"), str) and item.get("match") in MATCH_RULES
              and isinstance(item.get("answers"), list) and item["answers"]
              and all(isinstance(a, str) for a in item["answers"]) and set(item) <= {"key", "match", "answers"})
        if not ok:
            raise ValueError(f"shadow.{route}.golden[{i}]: expected {{key, match (one of {list(MATCH_RULES)}), "
                             f"answers: [str, ...]}}, got {item!r}")
        rules.append(GoldenRule(item["key"], item["match"], tuple(item["answers"])))
    return tuple(rules)


def request_prompt(body: Any) -> str | None:
    """The prompt text a golden prompt is compared with: a completion's `prompt` (a string), or a
    chat's last message when the user sent it (its text parts joined). None otherwise."""
    prompt = getattr(body, "prompt", None)
    if isinstance(prompt, str):
        return prompt
    messages = getattr(body, "messages", None)
    if not messages:
        return None
    last = messages[-1]
    get = last.get if isinstance(last, dict) else (lambda k, d=None: getattr(last, k, d))
    if get("role") != "user":
        return None
    content = get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(t for t in parts if isinstance(t, str)) or None
    return None


def parse_config(raw: Any, arms: Iterable[str]) -> dict[str, ShadowRoute]:
    """The `shadow` key of the ingress's user_config -> route -> setting (routes at 0% left out).
    Raises ValueError on a malformed entry, so the ingress can refuse the whole update."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"shadow: expected a mapping route -> setting, got {raw!r}")
    arms = list(arms)
    parsed = {route: ShadowRoute.parse(route, value, arms) for route, value in raw.items()}
    return {route: s for route, s in parsed.items() if s.percent > 0}


def _unit(key: str) -> float:
    """A uniform number in [0, 1) from a key (blake2b, as split.py's rendezvous hash)."""
    digest = hashlib.blake2b(f"shadow\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def shadowed(key: str | None, percent: float, rng: random.Random | None = None) -> bool:
    """Is this request copied? Sticky per key (user, session or API key): a user's requests are
    all copied or none are; without a key, a coin per request."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    u = (rng or random).random() if key is None else _unit(key)
    return u * 100 < percent


class ShadowRecorder(Protocol):
    def record(self, route: str, arm: str, code: int | str, latency_s: float, ttft_s: float | None,
               itl_s: float | None, usage: dict | None) -> None: ...

    def dropped(self, route: str, arm: str, reason: str) -> None: ...

    def golden(self, route: str, arm: str, passed: bool) -> None: ...


class ShadowMetrics:
    """The `ray_corral_shadow_*` series, recorded with ray.util.metrics (Ray's exporter adds `ray_`)."""

    def __init__(self) -> None:
        from ray.util import metrics

        tags = ("route", "arm")
        self.requests = metrics.Counter(names.SHADOW_REQUESTS.removesuffix("_total"),
                                        "Shadow copies by route, arm and outcome.", tag_keys=tags + ("status",))
        self.latency = metrics.Histogram(names.SHADOW_LATENCY, "Shadow copies' end-to-end latency (s).",
                                         boundaries=LATENCY_BUCKETS_S, tag_keys=tags)
        self.ttft = metrics.Histogram(names.SHADOW_TTFT, "Shadow copies' time to first token (s).",
                                      boundaries=TTFT_BUCKETS_S, tag_keys=tags)
        self.itl = metrics.Histogram(names.SHADOW_ITL, "Shadow copies' mean inter-token latency (s).",
                                     boundaries=ITL_BUCKETS_S, tag_keys=tags)
        self.input_tokens = metrics.Counter(names.SHADOW_INPUT_TOKENS.removesuffix("_total"),
                                            "Shadow copies' prompt tokens.", tag_keys=tags)
        self.output_tokens = metrics.Counter(names.SHADOW_OUTPUT_TOKENS.removesuffix("_total"),
                                             "Shadow copies' completion tokens.", tag_keys=tags)
        self.dropped_total = metrics.Counter(names.SHADOW_DROPPED.removesuffix("_total"),
                                             "Shadow copies not sent (reason: full, error).",
                                             tag_keys=tags + ("reason",))
        self.golden_total = metrics.Counter(names.SHADOW_GOLDEN.removesuffix("_total"),
                                            "Shadow answers to golden prompts, scored (result: pass, fail).",
                                            tag_keys=tags + ("result",))

    def record(self, route, arm, code, latency_s, ttft_s, itl_s, usage) -> None:
        tags = {"route": route, "arm": arm}
        self.requests.inc(1, {**tags, "status": str(code)})
        if names.answered(code):  # as the user series: latency of answers only
            self.latency.observe(latency_s, tags)
        if ttft_s is not None:
            self.ttft.observe(ttft_s, tags)
        if itl_s is not None:
            self.itl.observe(itl_s, tags)
        if usage:
            if usage.get("prompt_tokens"):
                self.input_tokens.inc(usage["prompt_tokens"], tags)
            if usage.get("completion_tokens"):
                self.output_tokens.inc(usage["completion_tokens"], tags)

    def dropped(self, route, arm, reason) -> None:
        self.dropped_total.inc(1, {"route": route, "arm": arm, "reason": reason})

    def golden(self, route, arm, passed) -> None:
        self.golden_total.inc(1, {"route": route, "arm": arm, "result": "pass" if passed else "fail"})


Send = Callable[[Any, str], Awaitable[Any]]


class Shadow:
    """The shadow copies of one ingress replica (one event loop)."""

    def __init__(self, send: Send, metrics: ShadowRecorder | None = None, rng: random.Random | None = None):
        self._send = send
        self._metrics = metrics
        self._rng = rng
        self.routes: dict[str, ShadowRoute] = {}
        self.in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    @property
    def metrics(self) -> ShadowRecorder:
        if self._metrics is None:
            self._metrics = ShadowMetrics()
        return self._metrics

    def configure(self, raw: Any, arms: Iterable[str]) -> None:
        """Apply the user_config's `shadow` (None = off); ValueError leaves the old setting."""
        self.routes = parse_config(raw, arms)

    def copy(self, route: str, arm: str, body: Any, call_method: str, key: str | None) -> bool:
        """Called once the user's request on `route` is routed to `arm` (before it is sent):
        maybe start a copy to the route's shadow arm. Never raises; True if a copy started."""
        setting = self.routes.get(route)
        if setting is None or arm == setting.arm or not shadowed(key, setting.percent, self._rng):
            return False
        try:
            if self.in_flight.get(route, 0) >= setting.max_in_flight:
                self.metrics.dropped(route, setting.arm, DROPPED_FULL)
                return False
            duplicate = body.model_copy(deep=True)
            duplicate.model = setting.arm
            if getattr(duplicate, "stream", False):
                duplicate.stream_options = with_usage(duplicate)  # exact token counts, as for users
            rule = setting.golden_rule(duplicate)
            task = asyncio.get_running_loop().create_task(self._run(route, setting, duplicate, call_method, rule))
        except Exception:
            try:
                self.metrics.dropped(route, setting.arm, DROPPED_ERROR)
            except Exception:
                pass
            return False
        self.in_flight[route] = self.in_flight.get(route, 0) + 1
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(route, t))
        return True

    def _done(self, route: str, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.in_flight[route] = max(0, self.in_flight.get(route, 0) - 1)

    async def _run(self, route: str, setting: ShadowRoute, body: Any, call_method: str,
                   rule: GoldenRule | None = None) -> None:
        start = time.perf_counter()
        first = last = None
        usage: dict | None = None
        answer: list[str] | None = [] if rule is not None else None  # the answer, for golden prompts only
        outcome: int | str = names.OUTCOME_EXCEPTION
        calls = ArmCalls()  # the copy's call to the candidate, cancelled if the copy is given up
        try:
            async with asyncio.timeout(setting.timeout_s):
                with calls:
                    response = await self._send(body, call_method)
                iterator = getattr(response, "body_iterator", None)
                if iterator is None:  # a whole answer
                    outcome = getattr(response, "status_code", 200)
                    usage = _usage_of(getattr(response, "body", b""))
                    if answer is not None:
                        answer.append(_answer_of(getattr(response, "body", b"")))
                else:
                    outcome = 200
                    async for packet in iterator:
                        text = packet if isinstance(packet, str) else bytes(packet).decode()
                        now = time.perf_counter()
                        if _CHOICE.search(text):
                            first = first or now
                            last = now
                        if _USAGE.search(text):
                            usage = _stream_usage(text) or usage
                        if 'data: {"error"' in text:
                            outcome = names.OUTCOME_STREAM_ERROR
                        if answer is not None:
                            answer.append(_stream_text(text))
        except asyncio.TimeoutError:
            calls.cancel()
            outcome = names.OUTCOME_TIMEOUT
        except asyncio.CancelledError:
            calls.cancel()
            return  # the ingress is shutting down: nothing to record
        except Exception as exc:  # the arm failed: count it, never pass it on
            status = getattr(exc, "status_code", None)
            outcome = status if isinstance(status, int) else names.OUTCOME_EXCEPTION
        try:
            n_out = (usage or {}).get("completion_tokens") or 0
            itl = (last - first) / (n_out - 1) if first and last and n_out > 1 else None
            self.metrics.record(route, setting.arm, outcome, time.perf_counter() - start,
                                first - start if first else None, itl, usage)
            if rule is not None and answer is not None and outcome == 200:
                # Only answered copies are scored: a failed copy is an error (counted above), not a wrong answer.
                self.metrics.golden(route, setting.arm, score_reply(rule.match, rule.answers, "".join(answer)) > 0)
        except Exception:
            pass  # metrics must not fail the loop either


def _usage_of(body: bytes | str) -> dict | None:
    try:
        return (json.loads(body) or {}).get("usage")
    except (ValueError, TypeError, AttributeError):
        return None


def _answer_of(body: bytes | str) -> str:
    """The first choice's text of a whole (non-streamed) answer."""
    try:
        choice = ((json.loads(body) or {}).get("choices") or [{}])[0]
    except (ValueError, TypeError, AttributeError):
        return ""
    message = choice.get("message") or {}
    return str(message.get("content") or choice.get("text") or "")


def _stream_text(packet: str) -> str:
    """The first choice's text in a packet of server-sent events (chat deltas or completion text)."""
    out = []
    for line in packet.split("\n"):
        if not line.startswith("data: {") or '"choices"' not in line:
            continue
        try:
            choices = json.loads(line[6:]).get("choices") or []
        except ValueError:
            continue
        for c in choices:
            if c.get("index", 0) == 0:
                out.append(str((c.get("delta") or {}).get("content") or c.get("text") or ""))
    return "".join(out)


def _stream_usage(packet: str) -> dict | None:
    usage = None
    for line in packet.split("\n"):
        if line.startswith("data: {") and _USAGE.search(line):
            try:
                usage = json.loads(line[6:]).get("usage") or usage
            except ValueError:
                continue
    return usage


def with_usage(body: Any) -> Any:
    """A request's stream_options with include_usage on (vLLM's own StreamOptions type): exact
    token counts in a stream's last chunk, for the ingress's metrics and a shadow copy's."""
    if body.stream_options is not None:
        return body.stream_options.model_copy(update={"include_usage": True})
    body_cls: Any = type(body)
    return _usage_only_options(body_cls)


@functools.cache
def _usage_only_options(body_cls: Any) -> Any:
    """`stream_options` of include_usage alone, for a request class (built once; never modified)."""
    annotation = body_cls.model_fields["stream_options"].annotation
    options_cls = next(a for a in typing.get_args(annotation) if a is not type(None))
    return options_cls(include_usage=True)


# -- the shadow setting in a Serve config (used by the rollout's local and KubeRay actuators) ------

def route_shadow(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The shadow settings in a Serve application config's ingress override (route -> setting)."""
    from corral.serving.app import INGRESS_DEPLOYMENT

    for d in app.get("deployments") or []:
        if d.get("name") == INGRESS_DEPLOYMENT:
            return {r: dict(v) for r, v in ((d.get("user_config") or {}).get("shadow") or {}).items()}
    return {}


def set_route_shadow(app: dict[str, Any], route: str, setting: dict[str, Any] | None) -> bool:
    """Set (or, with None / {}, remove) one route's shadow setting in the ingress's user_config
    override, beside the route weights: Serve applies it in place through the ingress's
    `reconfigure`, like a weight change. False if it already was so. Raises KeyError for an
    unknown route, ValueError for a bad setting."""
    from corral.serving.app import INGRESS_DEPLOYMENT, _override, route_weights

    routes = route_weights(app)
    if route not in routes:
        raise KeyError(f"no route {route!r}; routes are {sorted(routes)}")
    current = route_shadow(app)
    wanted = {k: v for k, v in current.items() if k != route}
    if setting:
        arms = [a["name"] for a in ((app.get("args") or {}).get("fleet") or {}).get("arms", [])]
        wanted[route] = ShadowRoute.parse(route, setting, arms).to_dict()
    if wanted == current:
        return False
    override = _override(app, INGRESS_DEPLOYMENT)
    user_config = dict(override.get("user_config") or {"routes": routes})
    if wanted:
        user_config["shadow"] = wanted
    else:
        user_config.pop("shadow", None)
    override["user_config"] = user_config
    return True


def applied_shadow(ingress_user_config: dict[str, Any], route: str) -> dict[str, Any]:
    """The route's shadow setting in a user_config the ingress runs ({} = none)."""
    return dict(((ingress_user_config or {}).get("shadow") or {}).get(route) or {})
