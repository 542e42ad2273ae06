"""The one OpenAI HTTP client: SSE metering (pure, known timestamps) and both transports against a
local HTTP server speaking the OpenAI shapes (requests and aiohttp; no engine)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from corral.common.openai_http import Reply, SseMeter, apost, json_reply, post
from corral.loadtests.client import send_and_measure
from corral.loadtests.metrics import RequestRecord


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj) if not isinstance(obj, str) else obj}\n\n".encode()


def completion_chunk(text, model="arm-a"):
    return {"object": "text_completion", "model": model, "choices": [{"index": 0, "text": text}]}


USAGE = {"object": "text_completion", "model": "arm-a", "choices": [],
         "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}}


def test_known_timestamps_give_exact_ttft_itl_tpot_e2e():
    meter = SseMeter(sent_at=10.0)
    meter.feed(sse(completion_chunk(" a")), 10.25)
    meter.feed(sse(completion_chunk(" b")), 10.35)
    # Two events in one read share one arrival time (gap 0), as a client sees it.
    meter.feed(sse(completion_chunk(" c")) + sse(completion_chunk(" d")), 10.55)
    meter.feed(sse(USAGE) + sse("[DONE]"), 10.56)
    r = meter.finish(10.6)
    assert r.ok, r.error
    assert r.ttft_s == pytest.approx(0.25)
    assert r.itl_s == pytest.approx([0.10, 0.20, 0.0])
    assert r.e2e_s == pytest.approx(0.6)
    assert (r.input_tokens, r.output_tokens) == (12, 4)
    assert r.tpot_s == pytest.approx((0.6 - 0.25) / 3)
    assert r.content_events == 4
    assert r.arm == "arm-a" and r.text == " a b c d"


def test_lines_split_across_reads_and_chat_deltas():
    chat = {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    role_only = {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    raw = sse(role_only) + sse(chat) + sse(chat) + sse({**USAGE, "model": "m"}) + sse("[DONE]")
    meter = SseMeter(sent_at=0.0)
    t = 0.0
    for i in range(0, len(raw), 7):  # 7-byte reads split every line
        t += 0.001
        meter.feed(raw[i:i + 7], t)
    r = meter.finish(t)
    assert r.ok and r.content_events == 2 and r.text == "hihi"
    assert r.ttft_s > 0.001  # the role-only event is not a token


@pytest.mark.parametrize("chunks, error", [
    ([sse(completion_chunk(" a")), sse(USAGE)], "without [DONE]"),
    ([sse(completion_chunk(" a")), sse("[DONE]")], "no usage"),
    ([sse(USAGE), sse("[DONE]")], "no generated text"),
    ([sse({"error": {"message": "boom"}}), sse("[DONE]")], "server error"),
])
def test_incomplete_streams_are_failures(chunks, error):
    meter = SseMeter(sent_at=0.0)
    for i, c in enumerate(chunks):
        meter.feed(c, 0.1 * (i + 1))
    r = meter.finish(1.0)
    assert not r.ok and error in r.error and r.tpot_s is None


def test_usage_can_be_optional_and_json_bodies_are_read():
    meter = SseMeter(sent_at=0.0, require_usage=False)
    meter.feed(sse(completion_chunk("Paris")) + sse("[DONE]"), 0.1)
    assert meter.finish(0.2).ok
    chat = json.dumps({"model": "m", "choices": [{"message": {"content": "Paris"}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
    r = json_reply(chat, Reply())
    assert (r.text, r.arm, r.input_tokens, r.output_tokens, r.error) == ("Paris", "m", 3, 1, None)
    assert json_reply(json.dumps({"choices": [{"text": "x"}]}).encode(), Reply()).text == "x"
    assert "malformed JSON" in json_reply(b"<html>", Reply()).error


class _Server:
    """OpenAI chat/completions over HTTP/1.1: SSE when asked to stream, else JSON; 401 without
    `Bearer good` when `require_key`; records each request's path and Authorization header."""

    def __init__(self, require_key: bool = False):
        seen = self.seen = []

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append((self.path, self.headers.get("Authorization")))
                if require_key and self.headers.get("Authorization") != "Bearer good":
                    return self._send(401, b'{"error": {"message": "invalid API key"}}', "application/json")
                if not body.get("stream"):
                    data = {"model": body["model"], "choices": [{"message": {"content": "Paris"}}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
                    return self._send(200, json.dumps(data).encode(), "application/json")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("x-corral-arm", "arm-b")
                self.end_headers()
                for part in [sse({"model": body["model"], "choices": [{"index": 0, "delta": {"content": w}}]})
                             for w in ("one", " two", " three")] + [
                        sse({"model": body["model"], "choices": [],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 3}}), sse("[DONE]")]:
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def _send(self, status, data, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


CHAT_STREAM = {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
               "stream": True, "stream_options": {"include_usage": True}}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_transport_streams_measures_and_sends_the_key():
    import requests

    with _Server(require_key=True) as srv, requests.Session() as session:
        r = post(session, srv.url, CHAT_STREAM, api_key="good")
        assert r.ok, r.error
        assert (r.status, r.arm, r.model, r.text, r.output_tokens) == (200, "arm-b", "llama", "one two three", 3)
        assert r.content_events == 3 and len(r.itl_s) == 2 and 0 < r.ttft_s <= r.e2e_s
        refused = post(session, srv.url, CHAT_STREAM)
        assert refused.status == 401 and "HTTP 401" in refused.error and "invalid API key" in refused.error
        completions = post(session, srv.url, {"model": "m", "prompt": "hi", "max_tokens": 1}, api_key="good")
        assert completions.ok and completions.text == "Paris" and completions.ttft_s is None
        assert srv.seen == [("/v1/chat/completions", "Bearer good"), ("/v1/chat/completions", None),
                            ("/v1/completions", "Bearer good")]
        # The load test's record is the same reply, copied.
        rec = send_and_measure(session, srv.url, CHAT_STREAM, RequestRecord(7, stage="s"), api_key="good")
        assert rec.ok and rec.stage == "s" and rec.arm == "arm-b" and rec.output_tokens == 3
        assert rec.tpot_s == pytest.approx((rec.e2e_s - rec.ttft_s) / 2) and len(rec.itl_s) == 2
    down = post(requests.Session(), f"http://127.0.0.1:{_closed_port()}", CHAT_STREAM, timeout_s=2)
    assert down.status is None and "ConnectionError" in down.error


def test_async_transport_reads_the_same_replies():
    import aiohttp

    async def run(url):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            return (await apost(session, url, CHAT_STREAM, api_key="good"),
                    await apost(session, url, {**CHAT_STREAM, "stream": False}, api_key="good"),
                    await apost(session, url, CHAT_STREAM))

    with _Server(require_key=True) as srv:
        streamed, plain, refused = asyncio.run(run(srv.url))
    assert streamed.ok and streamed.text == "one two three" and streamed.output_tokens == 3
    assert streamed.arm == "arm-b" and streamed.content_events == 3 and streamed.ttft_s > 0
    assert plain.ok and plain.text == "Paris" and plain.output_tokens == 1
    assert refused.status == 401 and "invalid API key" in refused.error
    down = asyncio.run(run(f"http://127.0.0.1:{_closed_port()}"))[0]
    assert down.status is None and down.error
