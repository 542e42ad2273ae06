"""For locust's own UI or CLI: `locust -f loadtests/locustfile.py --host http://127.0.0.1:8000`.

Closed loop (locust's users), the same measured OpenAI streaming request as `corral loadtest`.
Settings from the environment: CORRAL_MODEL (llama), CORRAL_INPUT_TOKENS (128),
CORRAL_OUTPUT_TOKENS (64), CORRAL_CHAT (0/1), CORRAL_RESULTS (a JSONL file that receives one
record per request, with TTFT/ITL/TPOT; unset = none). Locust's table shows end-to-end times.
"""

import itertools
import os

import locust  # noqa: F401  (gevent patching first)
import requests
from locust import User, constant, events, task

from corral.common.openai_http import endpoint_path
from corral.loadtests.arrivals import request_body, synthesize_prompt
from corral.loadtests.client import send_and_measure
from corral.loadtests.metrics import RequestRecord

MODEL = os.environ.get("CORRAL_MODEL", "llama")
INPUT_TOKENS = int(os.environ.get("CORRAL_INPUT_TOKENS", "128"))
OUTPUT_TOKENS = int(os.environ.get("CORRAL_OUTPUT_TOKENS", "64"))
CHAT = os.environ.get("CORRAL_CHAT", "0") == "1"
RESULTS = os.environ.get("CORRAL_RESULTS")
_ids = itertools.count()


@events.init.add_listener
def _open_results(environment, **_kwargs):
    environment.corral_results = open(RESULTS, "a") if RESULTS else None


class OpenAIStreamingUser(User):
    wait_time = constant(0)

    def on_start(self):
        self.session = requests.Session()
        self.session.trust_env = False

    @task
    def completion(self):
        rid = next(_ids)
        record = RequestRecord(rid, stage="locust", target_input_tokens=INPUT_TOKENS,
                               target_output_tokens=OUTPUT_TOKENS)
        body = request_body(MODEL, synthesize_prompt(INPUT_TOKENS, salt=rid), OUTPUT_TOKENS, chat=CHAT)
        send_and_measure(self.session, self.host, body, record)
        self.environment.events.request.fire(
            request_type="POST", name=endpoint_path(CHAT), response_time=(record.e2e_s or 0) * 1000,
            response_length=record.output_tokens or 0, response=None, context={"arm": record.arm},
            exception=RuntimeError(record.error) if record.error else None)
        out = getattr(self.environment, "corral_results", None)
        if out is not None:
            out.write(record.to_json() + "\n")
            out.flush()
