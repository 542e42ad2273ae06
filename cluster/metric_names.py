"""Names of the metrics corral's ingress exports, as Prometheus sees them (the contract between
the ingress, dashboards, rollout gates and load tests; it lives in cluster/, the bottom layer).

The ingress records them with `ray.util.metrics` (names without the `ray_` prefix); Ray's
metrics agent exports them with the prefix. Dashboards, PromQL rollout gates and tests use
these constants, so a rename happens here once.
"""

PREFIX = "ray_"

# Counters (labels: route, arm, status — status is the HTTP status code as a string).
REQUESTS = "corral_requests_total"
# Histograms in seconds (labels: route, arm). LATENCY counts answered requests only (`answered`):
# a refused or failed request's time says nothing about the model's speed, and goodput (answered
# within the SLO / all requests) must not count a fast refusal as good.
LATENCY = "corral_request_latency_seconds"
TTFT = "corral_ttft_seconds"
ITL = "corral_itl_seconds"
# Counters of tokens from the engine's usage (labels: route, arm).
INPUT_TOKENS = "corral_input_tokens_total"
OUTPUT_TOKENS = "corral_output_tokens_total"
# Histogram of user ratings in [0, 1] sent to POST /v1/feedback (labels: route, arm).
FEEDBACK = "corral_feedback_score"


def answered(code: int | str) -> bool:
    """Whether a request's outcome (an HTTP status or an OUTCOME_* below) is an answer: a 2xx."""
    return isinstance(code, int) and 200 <= code < 300


def exported(name: str) -> str:
    """The series name Prometheus scrapes for one of the names above."""
    return PREFIX + name

# Custom autoscaling metrics each arm replica reports to Ray Serve (`record_autoscaling_stats`)
# for corral's policy; not Prometheus series. Latencies in seconds, KV cache use in [0, 1].
SIGNAL_TTFT_P95 = "corral_ttft_p95_s"
SIGNAL_ITL_P95 = "corral_itl_p95_s"
SIGNAL_KV_CACHE = "corral_kv_cache_usage"
# Prompt tokens of the requests a replica's engine holds that have not had their first token yet
# (vLLM's `AsyncLLM.get_num_queued_tokens()`): prefill work waiting on that replica.
SIGNAL_QUEUED_PROMPT_TOKENS = "corral_queued_prompt_tokens"
# Work a replica's engine did over the last window, per second: requests prefilled (first token
# out), prompt tokens prefilled, output tokens generated (vLLM's iteration stats).
SIGNAL_REQUESTS_PER_S = "corral_prefilled_requests_per_s"
SIGNAL_PROMPT_TOKENS_PER_S = "corral_prompt_tokens_per_s"
SIGNAL_OUTPUT_TOKENS_PER_S = "corral_output_tokens_per_s"

# Values of REQUESTS' `status` label besides HTTP status codes: the outcome of a request whose
# 200 headers were already sent, or that never got an HTTP answer from its arm. One count per
# attempt on an arm (a request retried on another arm counts on both).
OUTCOME_STREAM_ERROR = "stream_error"      # the arm sent an error event mid-stream
OUTCOME_EXCEPTION = "exception"            # the arm raised (replica or engine died, ...)
OUTCOME_TIMEOUT = "timeout"                # no first response within admission.failover.first_response_timeout_s
OUTCOME_CLIENT_DISCONNECT = "client_disconnect"  # the client went away before the answer ended
# PromQL regex of the statuses that are the server's fault (client disconnects are not).
SERVER_ERROR_STATUS_RE = "5..|stream_error|exception|timeout"

# Counter (labels: route, arm, reason): requests sent away from `arm`, the arm their user
# sticks to, because it was out (`arm_down`) or failed before answering (an OUTCOME_* or code).
FAILOVERS = "corral_failovers_total"
# Gauge (label: arm): 1 while the ingress routes to the arm, 0 while it is out.
ARM_UP = "corral_arm_up"

# Shadow traffic (a rollout's shadow stage, serving/shadow.py): copies of user requests sent to
# the candidate, whose answers nobody sees. Separate series with the same labels and buckets as
# their user counterparts, so no query of user traffic, user latency or cost can count them;
# gates select them for the candidate during the shadow stage (SHADOW_OF).
SHADOW_REQUESTS = "corral_shadow_requests_total"      # labels: route, arm, status (as REQUESTS)
SHADOW_LATENCY = "corral_shadow_request_latency_seconds"
SHADOW_TTFT = "corral_shadow_ttft_seconds"
SHADOW_ITL = "corral_shadow_itl_seconds"
SHADOW_INPUT_TOKENS = "corral_shadow_input_tokens_total"
SHADOW_OUTPUT_TOKENS = "corral_shadow_output_tokens_total"
# Counter (labels: route, arm, reason): copies not sent. `full`: max_in_flight copies were already
# in flight on the route; `error`: the copy could not even be prepared.
SHADOW_DROPPED = "corral_shadow_dropped_total"
# Counter (labels: route, arm, result = pass | fail): shadow answers to golden prompts, scored with
# the golden set's rule (the quality of the candidate's shadow answers on the golden subset).
SHADOW_GOLDEN = "corral_shadow_golden_total"
# User series -> the shadow series of the same measurement.
SHADOW_OF = {REQUESTS: SHADOW_REQUESTS, LATENCY: SHADOW_LATENCY, TTFT: SHADOW_TTFT, ITL: SHADOW_ITL,
             INPUT_TOKENS: SHADOW_INPUT_TOKENS, OUTPUT_TOKENS: SHADOW_OUTPUT_TOKENS}


# -- histogram boundaries of the ingress's series (part of the contract: gates and reports read
# quantiles off them) --------------------------------------------------------------------------

def log_buckets(low_s: float, high_s: float, per_decade: int = 20) -> list[float]:
    """Geometric histogram boundaries from low_s to high_s, `per_decade` per factor of ten
    (20 = 12% apart), rounded to 3 significant digits.

    Fine buckets matter twice here: SLO gates read quantiles off these histograms, and Ray's
    metrics exporter turns every observation into its bucket's *midpoint* (so `_sum`/`_count`
    means are only as exact as the buckets are narrow: at 12% apart, within about 6%).
    """
    if not 0 < low_s < high_s or per_decade < 1:
        raise ValueError(f"need 0 < low_s ({low_s}) < high_s ({high_s}) and per_decade ({per_decade}) >= 1")
    out: list[float] = []
    k = 0
    while True:
        b = float(f"{low_s * 10 ** (k / per_decade):.3g}")
        if b > high_s * (1 + 1e-9):
            return out
        if not out or b > out[-1]:
            out.append(b)
        k += 1


# SLO metrics (TTFT, ITL) 12% apart; end-to-end latency, which spans more, 26% apart and with
# a 10.0 boundary (the rollout's goodput gate counts requests under 10 s).
TTFT_BUCKETS_S = log_buckets(0.005, 120)
ITL_BUCKETS_S = log_buckets(0.001, 2)
LATENCY_BUCKETS_S = log_buckets(0.01, 600, per_decade=10)
