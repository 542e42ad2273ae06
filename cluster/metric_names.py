"""Names of the metrics corral's ingress exports, as Prometheus sees them (the contract between
the ingress, dashboards, rollout gates and load tests; it lives in cluster/, the bottom layer).

The ingress records them with `ray.util.metrics` (names without the `ray_` prefix); Ray's
metrics agent exports them with the prefix. Dashboards, PromQL rollout gates and tests use
these constants, so a rename happens here once.
"""

PREFIX = "ray_"

# Counters (labels: route, arm, status — status is the HTTP status code as a string).
REQUESTS = "corral_requests_total"
# Histograms in seconds (labels: route, arm).
LATENCY = "corral_request_latency_seconds"
TTFT = "corral_ttft_seconds"
ITL = "corral_itl_seconds"
# Counters of tokens from the engine's usage (labels: route, arm).
INPUT_TOKENS = "corral_input_tokens_total"
OUTPUT_TOKENS = "corral_output_tokens_total"
# Histogram of user ratings in [0, 1] sent to POST /v1/feedback (labels: route, arm).
FEEDBACK = "corral_feedback_score"


def exported(name: str) -> str:
    """The series name Prometheus scrapes for one of the names above."""
    return PREFIX + name

# Custom autoscaling metrics each arm replica reports to Ray Serve (`record_autoscaling_stats`)
# for corral's policy; not Prometheus series. Latencies in seconds, KV cache use in [0, 1].
SIGNAL_TTFT_P95 = "corral_ttft_p95_s"
SIGNAL_ITL_P95 = "corral_itl_p95_s"
SIGNAL_KV_CACHE = "corral_kv_cache_usage"

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
