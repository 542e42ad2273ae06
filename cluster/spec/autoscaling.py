"""Per-arm autoscaling settings (consumed by corral.autoscaler's Ray Serve policy)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AutoscalingSpec(BaseModel):
    """How one arm's replica count follows load. Bounds come from `arm.replicas`."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    target_ongoing_requests: float = Field(8.0, gt=0)
    """Requests in flight per replica the policy aims for (≈ the running batch).
    `corral plan capacity` sets it to the knee of latency vs batch size."""
    upscale_delay_s: float = Field(10.0, ge=0)
    """Load must stay above target this long before adding replicas."""
    downscale_delay_s: float = Field(120.0, ge=0)
    """Load must stay below target this long before removing replicas."""
    metrics_interval_s: float = Field(2.0, gt=0)
    """How often replicas report their load to the Serve controller."""
    look_back_period_s: float = Field(20.0, gt=0)
    """Window over which reported load is averaged."""

    @model_validator(mode="after")
    def _window(self) -> AutoscalingSpec:
        if self.look_back_period_s < self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s}) is shorter than "
                f"metrics_interval_s ({self.metrics_interval_s}): the window would hold no sample"
            )
        return self
