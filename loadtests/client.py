"""One measured OpenAI streaming request over a `requests` session.

Used by the locust users (where gevent makes `requests` cooperative) and by plain scripts.
Timing uses time.perf_counter; `sent_at` is taken just before the request goes out.
"""

from __future__ import annotations

import time

import requests

from corral.loadtests.metrics import RequestRecord, StreamMeter


def endpoint_path(chat: bool) -> str:
    return "/v1/chat/completions" if chat else "/v1/completions"


def send_and_measure(session: requests.Session, base_url: str, body: dict, record: RequestRecord,
                     chat: bool = False, timeout_s: float = 120.0, clock=time.perf_counter) -> RequestRecord:
    """POST body (stream=True), read the SSE stream to its end, fill and return record.

    Never raises for HTTP or connection failures: they become `record.error`, so a failing
    server shows up in the results instead of killing the load generator.
    """
    sent_at = clock()
    meter = StreamMeter(record, sent_at)
    try:
        with session.post(base_url.rstrip("/") + endpoint_path(chat), json=body, stream=True,
                          timeout=timeout_s) as resp:
            record.status = resp.status_code
            record.arm = resp.headers.get("x-corral-arm")
            if resp.status_code != 200:
                record.error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                record.e2e_s = clock() - sent_at
                return record
            # chunk_size=None yields each chunk of a chunked response as it arrives.
            for chunk in resp.iter_content(chunk_size=None):
                meter.feed(chunk, clock())
                if clock() - sent_at > timeout_s:
                    record.error = f"stream exceeded timeout_s={timeout_s:g}"
                    break
        return meter.finish(clock())
    except (requests.RequestException, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        record.e2e_s = clock() - sent_at
        return record
