"""RolloutSpec validation and the fleet cross-check quote the bad values."""

import pytest
from pydantic import ValidationError

from corral.cluster.spec.rollout import CapacitySpec, RolloutSpec, RolloutStep, needed_replicas


def test_defaults_are_valid_llama2_to_3():
    s = RolloutSpec(route="chat", baseline="llama2", candidate="llama3")
    assert [x.weight for x in s.steps] == [50, 70, 90, 100]
    assert {g.name for g in s.gates} == {"error_rate", "ttft_p95", "itl_p95", "goodput"}


@pytest.mark.parametrize("over,fragment", [
    ({"steps": [RolloutStep(weight=70), RolloutStep(weight=50), RolloutStep(weight=100)]}, "[70, 50, 100]"),
    ({"steps": [RolloutStep(weight=50)]}, "[50]"),
    ({"candidate": "llama2"}, "'llama2'"),
    ({"min_window_s": 600}, "600"),
])
def test_bad_specs_quote_values(over, fragment):
    with pytest.raises(ValidationError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        RolloutSpec(**{"route": "chat", "baseline": "llama2", "candidate": "llama3", **over})


def test_check_against_fleet():
    s = RolloutSpec(route="chat", baseline="llama2", candidate="llama3")
    s.check_against(["llama2", "llama3"], {"chat": ["llama2", "llama3"]})
    with pytest.raises(ValueError, match="'llama3' is not an arm"):
        s.check_against(["llama2"], {"chat": ["llama2"]})
    with pytest.raises(ValueError, match="'chat' is not a route"):
        s.check_against(["llama2", "llama3"], {"other": ["llama2"]})
    with pytest.raises(ValueError, match=r"missing \['llama3'\]"):
        s.check_against(["llama2", "llama3"], {"chat": ["llama2"]})
    with pytest.raises(ValueError, match=r"\['x'\]"):
        s.check_against(["llama2", "llama3", "x"], {"chat": ["llama2", "llama3", "x"]})


def test_needed_replicas():
    cap = CapacitySpec(min_ready_replicas=1)
    assert needed_replicas(cap, 50, 4, 10) == 2
    assert needed_replicas(cap, 70, 4, 2) == 2      # capped at replicas.max
    assert needed_replicas(cap, 10, 1, 10) == 1
