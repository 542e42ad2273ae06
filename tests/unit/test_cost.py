"""Owned vs cloud vs API cost: every figure checked against numbers computed by hand."""

from __future__ import annotations

import json

import pytest
from test_loadtests_capacity import SLO, _cli, results_dir  # noqa: F401  (the load-test results fixture)

from corral.cluster.cost import ApiPrice, Load, OwnedHardware, break_even_month, compare, render_lines

# 1 rps, 500 input + 200 output tokens per request:
# 3600 x 730 = 2,628,000 requests/month; 1,314M input and 525.6M output tokens/month.
LOAD = Load(rps=1.0, input_tokens_per_request=500, output_tokens_per_request=200)
# $30,000 per GPU over 3 years = $833.33/month, + $100 power + $150 ops = $1,083.33 per GPU-month.
HW = OwnedHardware(purchase_usd_per_gpu=30_000, amortization_years=3, power_usd_per_gpu_month=100,
                   ops_usd_per_gpu_month=150)
API = ApiPrice(input_usd_per_1m=0.5, output_usd_per_1m=1.5)


def test_load_per_month():
    assert LOAD.requests_per_month == 2_628_000
    assert LOAD.input_tokens_per_month == 1_314_000_000
    assert LOAD.output_tokens_per_month == 525_600_000


def test_three_options_by_hand():
    c = compare(LOAD, gpus=2, owned=HW, gpu_hourly_usd=2.5, api=API)
    by = {o.option: o for o in c.options}
    assert by["owned"].usd_per_month == pytest.approx(2 * (30_000 / 36 + 250))          # 2166.67
    assert by["cloud"].usd_per_month == pytest.approx(2 * 2.5 * 730)                     # 3650
    assert by["api"].usd_per_month == pytest.approx(1314 * 0.5 + 525.6 * 1.5)           # 1445.40
    assert by["owned"].usd_per_1m_output_tokens == pytest.approx(2166.6667 / 525.6, rel=1e-6)  # 4.122
    assert by["cloud"].usd_per_1m_output_tokens == pytest.approx(3650 / 525.6)          # 6.944
    assert by["api"].usd_per_1m_output_tokens == pytest.approx(1445.4 / 525.6)          # 2.75
    assert by["api"].usd_per_1m_tokens == pytest.approx(1445.4 / (1314 + 525.6))
    # Cash break-even: $60,000 up front; cloud saves 3650 - 500 = 3150/month -> 19.05 -> month 20;
    # the API saves 1445.4 - 500 = 945.4/month -> 63.47 -> month 64.
    assert by["cloud"].break_even_month_of_owning == 20
    assert by["api"].break_even_month_of_owning == 64
    assert by["owned"].break_even_month_of_owning is None
    text = "\n".join(render_lines(c))
    assert "owning breaks even in month 64" in text and "$1,445.40/month" in text


def test_owning_never_breaks_even_when_running_costs_exceed_the_alternative():
    assert break_even_month(HW, 2, alternative_usd_per_month=500.0) is None
    assert break_even_month(HW, 2, alternative_usd_per_month=499.0) is None
    # exactly on a month boundary: 60,000 / (3500 - 500) = 20.0 -> month 20
    assert break_even_month(HW, 2, alternative_usd_per_month=3500.0) == 20


def test_only_the_options_given_and_zero_tokens():
    c = compare(Load(0.0, 10, 10), gpus=1, gpu_hourly_usd=1.0)
    assert [o.option for o in c.options] == ["cloud"]
    assert c.options[0].usd_per_month == 730 and c.options[0].usd_per_1m_output_tokens is None


@pytest.mark.parametrize("bad", [
    lambda: OwnedHardware(purchase_usd_per_gpu=-1),
    lambda: OwnedHardware(purchase_usd_per_gpu=1, amortization_years=0),
    lambda: ApiPrice(float("nan"), 1),
    lambda: Load(-1, 1, 1),
    lambda: compare(LOAD, gpus=-1),
])
def test_bad_inputs_are_refused_with_the_field(bad):
    with pytest.raises(ValueError, match="must be"):
        bad()


def test_plan_capacity_prints_the_cost_comparison(capsys, results_dir):  # noqa: F811
    argv = ["--results", str(results_dir), "--slo", SLO, "--target-rps", "25", "--gpu-price", "2.5",
            "--owned-gpu-usd", "30000", "--power-usd-per-gpu-month", "100", "--ops-usd-per-gpu-month", "150",
            "--api-input-usd-per-1m", "0.5", "--api-output-usd-per-1m", "1.5"]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert "owned $" in out and "cloud $" in out and "api   $" in out and "breaks even" in out
    assert _cli(argv + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    gpus = doc["plan"]["gpus"]
    by = {o["option"]: o for o in doc["cost"]["options"]}
    assert by["cloud"]["usd_per_month"] == pytest.approx(gpus * 2.5 * 730)
    assert by["owned"]["usd_per_month"] == pytest.approx(gpus * (30000 / 36 + 250))
    with pytest.raises(Exception, match="go together"):
        _cli(argv[:-2])
