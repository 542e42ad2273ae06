"""The official OpenAI SDK against the real fleet: models, completions, chat, streaming, errors."""

import openai
import pytest
import requests


def test_models_lists_routes_and_arms(openai_client):
    ids = [m.id for m in openai_client.models.list().data]
    assert ids[:2] == ["llama", "tiny"]  # routes first
    assert set(ids) == {"llama", "tiny", "smollm2", "tiny-random", "tiny-random-tp2", "tiny-elastic"}


def test_chat_answers_sensibly(openai_client):
    r = openai_client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20, temperature=0,
    )
    assert "Paris" in r.choices[0].message.content
    assert r.model == "smollm2"
    assert r.usage.completion_tokens > 0


def test_completions(openai_client):
    r = openai_client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
    assert "5" in r.choices[0].text
    assert r.usage.prompt_tokens > 0


def test_streaming_chat_via_route(openai_client):
    stream = openai_client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12,
        temperature=0, stream=True, user="stream-user",
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert {c.model for c in chunks} <= {"smollm2", "tiny-random"}
    # No usage chunk unless asked for (the router asks vLLM for it, then strips it).
    assert all(c.usage is None for c in chunks)


def test_streaming_with_usage_when_asked(openai_client):
    stream = openai_client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        stream=True, stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage]
    assert usage and usage[-1].completion_tokens == 5


def test_tensor_parallel_2_matches_tp_1(openai_client):
    """The same random-weight model served with TP=2 (vLLM mp executor, 2 bound cores) decodes like TP=1."""
    outs = {}
    for arm in ("tiny-random", "tiny-random-tp2"):
        r = openai_client.completions.create(model=arm, prompt="The quick brown fox", max_tokens=16,
                                             temperature=0, extra_body={"ignore_eos": True})
        outs[arm] = r.choices[0].text
        assert r.usage.completion_tokens == 16
    assert outs["tiny-random"] == outs["tiny-random-tp2"]


def test_unknown_model_is_404_in_openai_format(openai_client):
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert "gpt-nope" in str(info.value)


def test_malformed_json_is_400(fleet_url):
    r = requests.post(f"{fleet_url}/v1/chat/completions", data="{not json", headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400
    assert "error" in r.json()


def test_limits_are_400(openai_client):
    with pytest.raises(openai.BadRequestError):
        openai_client.completions.create(model="smollm2", prompt="hi", max_tokens=50_000)
    with pytest.raises(openai.BadRequestError):
        openai_client.completions.create(model="smollm2", prompt="word " * 3000, max_tokens=5)
