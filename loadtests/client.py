"""One measured OpenAI streaming request of a load test, as a `RequestRecord`.

The request and the reading of its stream are `corral.common.openai_http.post` (over a
`requests` session: the locust users, where gevent makes it cooperative, and plain scripts);
this module only copies the measured reply into the load test's record.
"""

from __future__ import annotations

import time

import requests

from corral.common.openai_http import Reply, post
from corral.loadtests.metrics import RequestRecord


def send_and_measure(session: requests.Session, base_url: str, body: dict, record: RequestRecord,
                     timeout_s: float = 120.0, api_key: str | None = None, clock=time.perf_counter) -> RequestRecord:
    """POST body (stream=True), read the SSE stream to its end, fill and return record.

    Never raises for HTTP or connection failures: they become `record.error`, so a failing
    server shows up in the results instead of killing the load generator.
    """
    return fill_record(record, post(session, base_url, body, api_key=api_key, timeout_s=timeout_s, clock=clock))


def fill_record(record: RequestRecord, reply: Reply) -> RequestRecord:
    """Copy a measured reply's status, arm, timings, token counts and error into `record`."""
    record.status, record.model, record.arm = reply.status, reply.model, reply.arm
    record.ttft_s, record.e2e_s, record.itl_s = reply.ttft_s, reply.e2e_s, list(reply.itl_s)
    record.tpot_s = reply.tpot_s
    record.input_tokens, record.output_tokens = reply.input_tokens, reply.output_tokens
    record.content_events = reply.content_events
    record.error = reply.error
    return record
