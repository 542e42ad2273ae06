"""Shadow copies through corral's real ingress, with stand-in arms (the fake Serve handles of
test_ingress_resilience): the user gets the baseline's answer, the candidate gets a copy whose
outcome lands only in the shadow series, a slow or failing candidate neither delays nor fails
the user, and copies beyond the bound are dropped and counted."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from test_ingress_resilience import Arm, chat_body, http_request, make_ingress, read

from corral.cluster import metric_names as names
from corral.serving.shadow import Shadow, ShadowMetrics, parse_config, shadowed


class ShadowRecorder:
    """Stands in for ShadowMetrics: keeps every record and drop."""

    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.drops: list[tuple[str, str, str]] = []
        self.golden_results: list[tuple[str, str, bool]] = []

    def record(self, route, arm, code, latency_s, ttft_s, itl_s, usage):
        self.records.append((route, arm, str(code), latency_s, ttft_s, itl_s, usage))

    def dropped(self, route, arm, reason):
        self.drops.append((route, arm, reason))

    def golden(self, route, arm, passed):
        self.golden_results.append((route, arm, passed))


def shadow_ingress(percent=100, max_in_flight=4, timeout_s=5.0, weights=None, golden=None):
    ingress, arms, rec = make_ingress(weights=weights or {"a": 100, "b": 0})
    srec = ShadowRecorder()
    ingress._shadow._metrics = srec
    setting = {"arm": "b", "percent": percent, "max_in_flight": max_in_flight, "timeout_s": timeout_s}
    if golden is not None:
        setting["golden"] = golden
    ingress.reconfigure({"routes": {"llama": weights or {"a": 100, "b": 0}}, "shadow": {"llama": setting}})
    return ingress, arms, rec, srec


class SlowArm(Arm):
    """A candidate that takes `delay_s` before its (streamed) answer, recording each body it got."""

    def __init__(self, name, delay_s):
        super().__init__(name)
        self.delay_s, self.bodies = delay_s, []

    def remote(self, body, raw_request_info=None):
        self.bodies.append(body)
        return super().remote(body, raw_request_info)

    async def _run(self, body):
        await asyncio.sleep(self.delay_s)
        async for part in super()._run(body):
            yield part


async def settle(ingress, timeout_s=5.0):
    """Wait until every shadow copy has finished."""
    deadline = time.monotonic() + timeout_s
    while ingress._shadow._tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("stream", [True, False])
def test_user_gets_the_baselines_answer_and_the_candidate_a_copy(stream):
    ingress, arms, rec, srec = shadow_ingress()
    arms["b"] = SlowArm("b", 0.0)
    ingress._default_serve_handles["b"] = arms["b"]
    ingress._configured_serve_handles.clear()

    async def go():
        response = await ingress.chat(chat_body(user="u-7", stream=stream), http_request())
        text = await read(response)
        await settle(ingress)
        return response, text

    response, text = asyncio.run(go())
    assert response.status_code == 200 and response.headers["x-corral-arm"] == "a"
    assert "chatcmpl-a" in text and "chatcmpl-b" not in text
    assert arms["a"].calls == 1 and arms["b"].calls == 1
    copy = arms["b"].bodies[0]
    assert copy.model == "b" and copy.messages == chat_body().messages and copy.user == "u-7"
    # User series: only the baseline's request. Shadow series: only the candidate's copy.
    assert rec.records == [("llama", "a", "200")]
    assert [r[:3] for r in srec.records] == [("llama", "b", "200")]
    _, _, _, latency, ttft, itl, usage = srec.records[0]
    assert latency >= 0 and usage["completion_tokens"] in (1, 2)
    if stream:
        assert ttft is not None and ttft <= latency and itl is not None
    else:
        assert ttft is None
    assert srec.drops == []


def test_a_slow_candidate_drops_copies_beyond_the_bound_and_never_delays_users():
    ingress, arms, rec, srec = shadow_ingress(max_in_flight=2, timeout_s=0.5)
    arms["b"].mode = "hang"  # never answers

    async def one(i):
        t0 = time.perf_counter()
        text = await read(await ingress.chat(chat_body(user=f"u-{i}"), http_request()))
        return time.perf_counter() - t0, text

    async def go():
        results = [await one(i) for i in range(10)]
        in_flight = dict(ingress._shadow.in_flight)
        await settle(ingress)
        return results, in_flight

    results, in_flight = asyncio.run(go())
    assert all("chatcmpl-a" in text for _, text in results)
    assert max(t for t, _ in results) < 0.4  # each user answer came before the candidate's timeout
    assert in_flight == {"llama": 2}
    assert srec.drops == [("llama", "b", "full")] * 8
    assert [r[2] for r in srec.records] == [names.OUTCOME_TIMEOUT] * 2
    assert arms["b"].calls == arms["b"].cancelled == 2  # the copies given up are cancelled on the candidate
    assert ingress._shadow.in_flight == {"llama": 0}
    assert rec.records == [("llama", "a", "200")] * 10


@pytest.mark.parametrize("mode,outcome", [("raise_before", names.OUTCOME_EXCEPTION), ("error_500", "500"),
                                          ("raise_mid_stream", names.OUTCOME_EXCEPTION),
                                          ("error_event", names.OUTCOME_STREAM_ERROR)])
def test_an_erroring_candidate_never_errors_the_user(mode, outcome):
    ingress, arms, rec, srec = shadow_ingress()
    arms["b"].mode = mode

    async def go():
        response = await ingress.chat(chat_body(), http_request())
        text = await read(response)
        await settle(ingress)
        return response, text

    response, text = asyncio.run(go())
    assert response.status_code == 200 and '"error"' not in text and "chatcmpl-a" in text
    assert rec.records == [("llama", "a", "200")]
    assert [r[2] for r in srec.records] == [outcome]
    assert ingress._health.is_up("b")  # shadow failures do not eject the arm from user routing


def test_pinned_requests_and_requests_routed_to_the_shadow_arm_are_not_copied():
    ingress, arms, rec, srec = shadow_ingress(weights={"a": 50, "b": 50}, max_in_flight=100)

    async def go():
        await read(await ingress.chat(chat_body(model="a"), http_request()))  # pinned
        for i in range(20):
            await read(await ingress.chat(chat_body(user=f"u-{i}"), http_request()))
        await settle(ingress)

    asyncio.run(go())
    on_a = sum(1 for r in rec.records if r[1] == "a") - 1
    assert 0 < on_a < 20
    assert srec.drops == [] and len(srec.records) == on_a  # each routed request on the baseline copied, none else
    assert arms["b"].calls == (20 - on_a) + on_a  # its own users plus the copies


def test_shadow_share_is_sticky_per_user_and_close_to_percent():
    keys = [f"user-{i}" for i in range(20000)]
    share = sum(shadowed(k, 25) for k in keys) / len(keys)
    assert abs(share - 0.25) < 0.015
    assert [shadowed(k, 25) for k in keys[:100]] == [shadowed(k, 25) for k in keys[:100]]
    # Raising the percentage keeps every user already shadowed.
    assert all(shadowed(k, 60) for k in keys if shadowed(k, 25))
    rng = random.Random(1)
    assert abs(sum(shadowed(None, 10, rng) for _ in range(20000)) / 20000 - 0.10) < 0.01
    assert not any(shadowed(k, 0) for k in keys[:100]) and all(shadowed(k, 100) for k in keys[:100])


def test_reconfigure_refuses_a_bad_shadow_setting_and_keeps_everything_as_it_was():
    ingress, arms, rec, srec = shadow_ingress()
    before = (dict(ingress._routes), dict(ingress._shadow.routes))
    for bad in ({"llama": {"arm": "zz", "percent": 10}}, {"llama": {"arm": "b", "percent": 120}},
                {"llama": {"arm": "b", "percent": 10, "max_in_flight": 0}}, {"llama": {"arm": "b", "pct": 1}}, [1]):
        with pytest.raises(ValueError):
            ingress.reconfigure({"routes": {"llama": {"a": 10, "b": 90}}, "shadow": bad})
        assert (ingress._routes, ingress._shadow.routes) == before
    ingress.reconfigure({"routes": {"llama": {"a": 100, "b": 0}}})  # no shadow key: shadow off
    assert ingress._shadow.routes == {}
    assert parse_config({"llama": {"arm": "b", "percent": 0}}, ["a", "b"]) == {}


def test_a_copy_that_cannot_be_prepared_is_counted_and_the_user_is_served():
    srec = ShadowRecorder()
    shadow = Shadow(send=None, metrics=srec)
    shadow.configure({"r": {"arm": "b", "percent": 100}}, ["a", "b"])

    class Unclonable:
        def model_copy(self, deep):
            raise TypeError("cannot copy")

    async def go():
        return shadow.copy("r", "a", Unclonable(), "chat", "u")

    assert asyncio.run(go()) is False
    assert srec.drops == [("r", "b", "error")] and shadow.in_flight == {}


def test_shadow_metrics_are_their_own_series():
    m = ShadowMetrics()  # ray.util.metrics objects; recording needs no running Ray
    exported = {names.exported(n) for n in names.SHADOW_OF.values()} | {names.exported(names.SHADOW_DROPPED)}
    user = {names.exported(n) for n in (names.REQUESTS, names.LATENCY, names.TTFT, names.ITL,
                                        names.INPUT_TOKENS, names.OUTPUT_TOKENS)}
    assert all(n.startswith("ray_corral_shadow_") for n in exported) and not exported & user
    recorded = {m.requests._name, m.latency._name, m.ttft._name, m.itl._name, m.input_tokens._name,
                m.output_tokens._name, m.dropped_total._name}
    assert {"ray_" + n + ("_total" if n in (m.requests._name, m.input_tokens._name, m.output_tokens._name,
                                            m.dropped_total._name) else "") for n in recorded} == exported
    assert m.latency.boundaries == names.LATENCY_BUCKETS_S and m.ttft.boundaries == names.TTFT_BUCKETS_S
    m.record("r", "b", 200, 0.1, 0.01, 0.001, {"prompt_tokens": 3, "completion_tokens": 2})
    m.dropped("r", "b", "full")


def test_shadow_latency_takes_answered_copies_only(monkeypatch):
    m = ShadowMetrics()
    observed = []
    monkeypatch.setattr(m.latency, "observe", lambda value, tags: observed.append(value))
    for code in (503, names.OUTCOME_TIMEOUT, 429, 200):
        m.record("r", "b", code, 0.5, None, None, None)
    assert observed == [0.5]  # a failed copy is an error, not a fast answer (goodput's numerator)



# -- quality on the golden subset -------------------------------------------------------------

def rules(*prompts_answers, match="contains"):
    from corral.rollout.quality import GoldenPrompt, golden_rules

    return golden_rules([GoldenPrompt(id=str(i), prompt=p, answers=tuple(a), match=match)
                         for i, (p, a) in enumerate(prompts_answers)])


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("answers,passed", [(["hey"], True), (["bye"], False)])
def test_shadow_answers_to_golden_prompts_are_scored_with_the_golden_rule(stream, answers, passed):
    """The stand-in candidate answers "hey" (streamed as "he" + "y"): the whole answer is scored."""
    ingress, arms, rec, srec = shadow_ingress(golden=rules(("What  is\nthe greeting?", answers)))

    async def go():
        for user, prompt in (("u-1", "What is the greeting?"), ("u-2", "something else")):
            body = chat_body(user=user, stream=stream, messages=[{"role": "user", "content": prompt}])
            assert "chatcmpl-a" in await read(await ingress.chat(body, http_request()))
        await settle(ingress)

    asyncio.run(go())
    assert [r[:3] for r in srec.records] == [("llama", "b", "200")] * 2  # both copied
    assert srec.golden_results == [("llama", "b", passed)]  # only the golden prompt scored (whitespace folded)
    assert rec.records == [("llama", "a", "200")] * 2  # users' series untouched


def test_a_failed_copy_of_a_golden_prompt_is_an_error_not_a_wrong_answer():
    ingress, arms, rec, srec = shadow_ingress(golden=rules(("hi", ["hey"])))
    arms["b"].mode = "error_500"

    async def go():
        await read(await ingress.chat(chat_body(), http_request()))
        await settle(ingress)

    asyncio.run(go())
    assert [r[2] for r in srec.records] == ["500"] and srec.golden_results == []


def test_golden_rules_in_the_setting_are_validated_and_round_trip():
    good = rules(("hi", ["hey"]), ("2+2?", ["4"]), match="number")
    parsed = parse_config({"llama": {"arm": "b", "percent": 10, "golden": good}}, ["a", "b"])
    assert parsed["llama"].to_dict()["golden"] == good
    for bad in ([{"key": "k", "match": "fuzzy", "answers": ["x"]}], [{"key": "k", "match": "exact", "answers": []}],
                [{"key": "k", "match": "exact", "answers": ["x"], "extra": 1}], {"key": "k"}):
        with pytest.raises(ValueError, match="golden"):
            parse_config({"llama": {"arm": "b", "percent": 10, "golden": bad}}, ["a", "b"])


def test_the_prompt_a_golden_rule_is_matched_against():
    from types import SimpleNamespace as NS

    from corral.serving.shadow import request_prompt

    assert request_prompt(NS(prompt="Say hi", messages=None)) == "Say hi"
    assert request_prompt(NS(prompt=None, messages=[{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": "Say hi"}])) == "Say hi"
    assert request_prompt(NS(prompt=None, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Say "}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "hi"}]}])) == "Say hi"
    assert request_prompt(NS(prompt=None, messages=[{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "a"}])) is None
    assert request_prompt(NS(prompt=[1, 2, 3], messages=None)) is None  # token ids: never a golden prompt
