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
