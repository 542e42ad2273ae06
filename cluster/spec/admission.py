"""What the ingress admits, and how long it waits on an arm (the fleet spec's `admission` section).

Every limit has a default that protects the engines from one client's mistake (an `n` of 1000,
a 50 MB body, hundreds of concurrent streams on one key) without getting in the way of normal
OpenAI clients. Limits are enforced per ingress replica (like the API keys' rate limits), and
they reach the ingress through Serve's `user_config`, so changing them restarts no replica.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RouteLimits(_Strict):
    """Per-route request limits (the defaults apply to every route and to pinned arms)."""

    max_tokens_default: int | None = Field(None, ge=1)
    """`max_tokens` given to requests that set neither `max_tokens` nor `max_completion_tokens`.
    None: the engine's default (the rest of the arm's `max_model_len`)."""
    max_tokens_cap: int | None = Field(None, ge=1)
    """Largest `max_tokens` / `max_completion_tokens` a request may ask for (400 above it).
    None: only the arm's `max_model_len` bounds it (the engine answers 400 beyond it)."""
    max_concurrent_requests: int | None = Field(512, ge=1)
    """Requests in flight on this route per ingress replica; more get 429 with Retry-After.
    None: unlimited."""

    @model_validator(mode="after")
    def _default_within_cap(self) -> RouteLimits:
        if self.max_tokens_default and self.max_tokens_cap and self.max_tokens_default > self.max_tokens_cap:
            raise ValueError(f"max_tokens_default ({self.max_tokens_default}) is larger than "
                             f"max_tokens_cap ({self.max_tokens_cap})")
        return self


class FailoverSpec(_Strict):
    """How the ingress tells failing arms apart and how long a request waits on one.

    The signal is the ingress's own: a server-side failure of a request on an arm (an
    exception from the arm, a 5xx answer, a 5xx error event in a stream, or no first response
    within `first_response_timeout_s`) takes the arm out of its routes at once; Serve's
    deployment status would report it only after its health-check period and threshold.
    While an arm is out, the ingress calls the arm's `check_health` (which asks the vLLM
    engine) every `probe_interval_s`; the first probe that succeeds puts the arm back, and
    its sticky users return to it.
    """

    first_response_timeout_s: float = Field(60.0, gt=0)
    """Longest wait for an arm's first response (the first chunk of a stream; the whole answer
    of a non-streamed request). Past it the client gets 503 with Retry-After and the arm
    counts as failing."""
    failures_to_eject: int = Field(1, ge=1)
    """Consecutive server-side failures on an arm that take it out of its routes."""
    probe_interval_s: float = Field(2.0, gt=0)
    """Seconds between health probes of an arm that is out."""
    probe_timeout_s: float = Field(5.0, gt=0)
    """A probe not answered within this counts as failed (a restarting replica never answers)."""
    retry_after_s: int = Field(5, ge=1)
    """`Retry-After` sent with 503 when a pinned arm, or every arm of a route, is out."""
    retry_on_other_arm: bool = True
    """A route request whose arm fails before any byte was sent is tried once more on the
    route's remaining healthy arms (pinned requests never change arm)."""


class AdmissionSpec(_Strict):
    """Admission control at the ingress, in OpenAI error format: 400 for invalid requests,
    413 for oversized bodies, 415 for bodies that are not JSON, 429 with Retry-After over a
    concurrency limit, 503 with Retry-After when no arm can serve."""

    max_body_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body in bytes (413 above it). 1 MiB is about 250k tokens of text."""
    max_header_bytes: int = Field(32_768, ge=1024)
    """Largest total size of the request's header names and values in bytes (431 above it)."""
    max_n: int = Field(8, ge=1)
    """Largest `n` (choices per request); each choice is a sequence in the engine's batch."""
    max_messages: int = Field(1024, ge=1)
    """Most chat messages in one request."""
    max_concurrent_requests_per_key: int | None = Field(64, ge=1)
    """Requests in flight per API key per ingress replica (429 above it). Requests without a
    key are limited by their route only. None: unlimited."""
    concurrency_retry_after_s: int = Field(1, ge=1)
    """`Retry-After` sent with a 429 for a concurrency limit."""
    route_defaults: RouteLimits = Field(default_factory=RouteLimits)
    """Limits for every route and pinned arm without an entry in `routes`."""
    routes: dict[str, RouteLimits] = Field(default_factory=dict)
    """Per-route (or per-arm, for pinned requests) overrides, by name."""
    failover: FailoverSpec = Field(default_factory=FailoverSpec)
    """Arm health, failover and the bound on waiting for an arm."""

    def limits(self, name: str) -> RouteLimits:
        return self.routes.get(name, self.route_defaults)
