"""Owning GPUs, renting them, or paying a hosted API: monthly cost, cost per 1M tokens, break-even.

Pure arithmetic (no I/O); `corral plan capacity` and `corral ab report` call it. Every figure:

Load (per month, 1 month = 730 h = 8760 h / 12):
    requests/month       = rps x 3600 x 730
    input tokens/month   = requests/month x mean input tokens per request
    output tokens/month  = requests/month x mean output tokens per request

Owned hardware (straight-line amortization, no resale value, no interest):
    owned $/month        = gpus x (purchase $/GPU / (12 x amortization years) + power $/GPU/month + ops $/GPU/month)
Cloud GPUs:
    cloud $/month        = gpus x GPU $/hour x 730
Hosted API (priced per token, no GPUs):
    api $/month          = input tokens/month / 1e6 x $ per 1M input + output tokens/month / 1e6 x $ per 1M output
Per 1M tokens, for each option:
    $ per 1M output tokens = $/month / (output tokens/month / 1e6)
    $ per 1M tokens        = $/month / ((input + output tokens/month) / 1e6)
Break-even of owning against an alternative (cash, not amortized: the purchase is paid in month 0):
    owned cash by month m    = gpus x purchase $/GPU + m x gpus x (power + ops)
    alternative by month m   = m x alternative $/month
    break-even month         = ceil(gpus x purchase / (alternative $/month - gpus x (power + ops)))
    (None: owning's running cost alone is at least the alternative's, so owning never catches up.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

HOURS_PER_MONTH = 730.0
"""8760 hours a year / 12."""


@dataclass(frozen=True)
class OwnedHardware:
    """A GPU you buy: price per GPU (its share of the server included), amortization, running costs."""

    purchase_usd_per_gpu: float
    amortization_years: float = 3.0
    power_usd_per_gpu_month: float = 0.0
    ops_usd_per_gpu_month: float = 0.0

    def __post_init__(self) -> None:
        _non_negative(purchase_usd_per_gpu=self.purchase_usd_per_gpu, power_usd_per_gpu_month=self.power_usd_per_gpu_month,
                      ops_usd_per_gpu_month=self.ops_usd_per_gpu_month)
        if not self.amortization_years > 0:
            raise ValueError(f"amortization_years={self.amortization_years} must be > 0")

    @property
    def running_usd_per_gpu_month(self) -> float:
        return self.power_usd_per_gpu_month + self.ops_usd_per_gpu_month

    @property
    def usd_per_gpu_month(self) -> float:
        return self.purchase_usd_per_gpu / (12 * self.amortization_years) + self.running_usd_per_gpu_month


@dataclass(frozen=True)
class ApiPrice:
    """A hosted API's list price per 1M input and output tokens."""

    input_usd_per_1m: float
    output_usd_per_1m: float

    def __post_init__(self) -> None:
        _non_negative(input_usd_per_1m=self.input_usd_per_1m, output_usd_per_1m=self.output_usd_per_1m)


@dataclass(frozen=True)
class Load:
    """The planned load: request rate and mean tokens per request."""

    rps: float
    input_tokens_per_request: float
    output_tokens_per_request: float

    def __post_init__(self) -> None:
        _non_negative(rps=self.rps, input_tokens_per_request=self.input_tokens_per_request,
                      output_tokens_per_request=self.output_tokens_per_request)

    @property
    def requests_per_month(self) -> float:
        return self.rps * 3600 * HOURS_PER_MONTH

    @property
    def input_tokens_per_month(self) -> float:
        return self.requests_per_month * self.input_tokens_per_request

    @property
    def output_tokens_per_month(self) -> float:
        return self.requests_per_month * self.output_tokens_per_request


@dataclass(frozen=True)
class OptionCost:
    option: str
    """`owned`, `cloud` or `api`."""
    usd_per_month: float
    usd_per_1m_output_tokens: float | None
    usd_per_1m_tokens: float | None
    """Input and output tokens together."""
    break_even_month_of_owning: int | None = None
    """For `cloud` and `api`: the month from which owning has cost less in cash (None: never)."""


@dataclass(frozen=True)
class CostComparison:
    load: Load
    gpus: int
    options: tuple[OptionCost, ...]

    def to_dict(self) -> dict:
        return {"load": {**asdict(self.load), "requests_per_month": self.load.requests_per_month,
                         "input_tokens_per_month": self.load.input_tokens_per_month,
                         "output_tokens_per_month": self.load.output_tokens_per_month},
                "gpus": self.gpus, "hours_per_month": HOURS_PER_MONTH,
                "options": [asdict(o) for o in self.options]}


def _non_negative(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}={v} must be a finite number >= 0")


def _per_1m(usd: float, tokens: float) -> float | None:
    return usd / (tokens / 1e6) if tokens > 0 else None


def owned_usd_per_month(hw: OwnedHardware, gpus: int) -> float:
    return gpus * hw.usd_per_gpu_month


def cloud_usd_per_month(gpu_hourly_usd: float, gpus: int) -> float:
    _non_negative(gpu_hourly_usd=gpu_hourly_usd)
    return gpus * gpu_hourly_usd * HOURS_PER_MONTH


def api_usd_per_month(price: ApiPrice, load: Load) -> float:
    return (load.input_tokens_per_month / 1e6 * price.input_usd_per_1m
            + load.output_tokens_per_month / 1e6 * price.output_usd_per_1m)


def break_even_month(hw: OwnedHardware, gpus: int, alternative_usd_per_month: float) -> int | None:
    """First whole month m with gpus x purchase + m x gpus x running <= m x alternative (None: never)."""
    margin = alternative_usd_per_month - gpus * hw.running_usd_per_gpu_month
    upfront = gpus * hw.purchase_usd_per_gpu
    if upfront == 0:
        return 0 if margin >= 0 else None
    if margin <= 0:
        return None
    return math.ceil(upfront / margin - 1e-12)


def compare(load: Load, gpus: int, owned: OwnedHardware | None = None, gpu_hourly_usd: float | None = None,
            api: ApiPrice | None = None) -> CostComparison:
    """Monthly cost and cost per 1M tokens of each option given; break-even of owning against the others.

    `gpus` is what the self-hosted options need for `load` (from `corral plan capacity`).
    """
    if gpus < 0:
        raise ValueError(f"gpus={gpus} must be >= 0")
    out_t, all_t = load.output_tokens_per_month, load.input_tokens_per_month + load.output_tokens_per_month
    options: list[OptionCost] = []

    def option(name: str, usd: float) -> OptionCost:
        be = break_even_month(owned, gpus, usd) if owned is not None and name != "owned" else None
        return OptionCost(name, usd, _per_1m(usd, out_t), _per_1m(usd, all_t), be)

    if owned is not None:
        options.append(option("owned", owned_usd_per_month(owned, gpus)))
    if gpu_hourly_usd is not None:
        options.append(option("cloud", cloud_usd_per_month(gpu_hourly_usd, gpus)))
    if api is not None:
        options.append(option("api", api_usd_per_month(api, load)))
    return CostComparison(load, gpus, tuple(options))


def render_lines(c: CostComparison) -> list[str]:
    """Human-readable lines for a terminal."""
    lines = [f"cost at {c.load.rps:g} rps ({c.load.requests_per_month:,.0f} requests, "
             f"{c.load.input_tokens_per_month / 1e6:,.1f}M input + {c.load.output_tokens_per_month / 1e6:,.1f}M "
             f"output tokens per month), {c.gpus} GPU(s) self-hosted:"]
    for o in c.options:
        per_out = "-" if o.usd_per_1m_output_tokens is None else f"${o.usd_per_1m_output_tokens:,.3f}"
        per_all = "-" if o.usd_per_1m_tokens is None else f"${o.usd_per_1m_tokens:,.3f}"
        line = f"  {o.option:5s} ${o.usd_per_month:,.2f}/month, {per_out} per 1M output tokens, {per_all} per 1M tokens"
        if o.option != "owned" and any(x.option == "owned" for x in c.options):
            line += ("; owning never breaks even" if o.break_even_month_of_owning is None
                     else f"; owning breaks even in month {o.break_even_month_of_owning}")
        lines.append(line)
    return lines
