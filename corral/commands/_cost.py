"""Cost flags shared by `corral plan capacity` and `corral ab report` (formulas: corral.cluster.cost)."""

from __future__ import annotations

import argparse

from corral.commands._common import EXIT_BAD_INPUT, CliError

COST_HELP = ("owned GPUs vs cloud GPUs vs a hosted API at the planned load (1 month = 730 h); "
             "cloud $/month = GPUs x --gpu-price x 730; "
             "$ per 1M output tokens = $/month / (output tokens per month / 1e6)")


def add_cost_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost", COST_HELP)
    g.add_argument("--owned-gpu-usd", type=float, default=None,
                   help="purchase price per GPU in USD (its share of the server included); owned $/month = GPUs x (purchase / (12 x years) + power + ops); break-even month of owning vs X = ceil(GPUs x purchase / (X $/month - GPUs x (power + ops)))")
    g.add_argument("--amortization-years", type=float, default=3.0, help="straight-line amortization of the purchase")
    g.add_argument("--power-usd-per-gpu-month", type=float, default=0.0, help="electricity and cooling per GPU-month")
    g.add_argument("--ops-usd-per-gpu-month", type=float, default=0.0, help="hosting, support, staff per GPU-month")
    g.add_argument("--api-input-usd-per-1m", type=float, default=None, help="hosted API price per 1M input tokens; api $/month = input tokens per month / 1e6 x this + output tokens per month / 1e6 x --api-output-usd-per-1m")
    g.add_argument("--api-output-usd-per-1m", type=float, default=None, help="hosted API price per 1M output tokens")


def cost_comparison(args: argparse.Namespace, gpus: int, rps: float, input_tokens: float, output_tokens: float,
                    gpu_hourly_usd: float | None):
    """The comparison the flags ask for, or None when no owned or API price was given."""
    from corral.cluster.cost import ApiPrice, Load, OwnedHardware, compare

    api_given = (args.api_input_usd_per_1m, args.api_output_usd_per_1m)
    if args.owned_gpu_usd is None and api_given == (None, None):
        return None
    if (api_given[0] is None) != (api_given[1] is None):
        raise CliError("--api-input-usd-per-1m and --api-output-usd-per-1m go together", EXIT_BAD_INPUT)
    try:
        owned = None if args.owned_gpu_usd is None else OwnedHardware(
            args.owned_gpu_usd, args.amortization_years, args.power_usd_per_gpu_month, args.ops_usd_per_gpu_month)
        api = None if api_given[0] is None else ApiPrice(*api_given)
        return compare(Load(rps, input_tokens, output_tokens), gpus, owned=owned, gpu_hourly_usd=gpu_hourly_usd, api=api)
    except ValueError as exc:
        raise CliError(f"cost: {exc}", EXIT_BAD_INPUT) from None
