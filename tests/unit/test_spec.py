"""Fleet spec validation: every bad input names its field and nothing is deployed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corral.cluster.spec import SpecError, load_fleet, parse_fleet
from corral.serving.app import llm_config_dict
from corral.serving.local import LocalError, cpu_dtype_check, parallelism_check

DEMO_ARM = {"name": "a", "model": {"demo": "smollm2-135m-instruct"}}


def problems(data, **kw):
    with pytest.raises(SpecError) as info:
        parse_fleet(data, **kw)
    return dict(info.value.problems)


def test_embedded_demo_fleet_is_valid():
    fleet = load_fleet()
    assert [a.name for a in fleet.arms] == ["smollm2-135m"]
    assert fleet.routes[0].weights() == {"smollm2-135m": 100}


def test_unknown_key_is_named():
    p = problems({"arms": [{**DEMO_ARM, "engine": {"max_num_seq": 4}}]})
    assert p == {"arms[a].engine.max_num_seq": "unknown key (not part of the fleet spec)"}


def test_tensor_parallel_larger_than_node():
    p = problems({"cluster": {"devices_per_node": 2}, "arms": [{**DEMO_ARM, "engine": {"tensor_parallel_size": 4}}]})
    (msg,) = p.values()
    assert "tensor_parallel_size=4" in msg and "devices_per_node=2" in msg


def test_tp_times_pp_larger_than_cluster_but_pp_may_span_nodes():
    gpu = {"device": "gpu", "nodes": 2, "devices_per_node": 4}
    ok = parse_fleet({"cluster": gpu, "arms": [{**DEMO_ARM, "engine": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2}}]})
    assert ok.arms[0].engine.devices_per_replica == 8
    p = problems({"cluster": gpu, "arms": [{**DEMO_ARM, "engine": {"tensor_parallel_size": 4, "pipeline_parallel_size": 4}}]})
    assert "4x4 = 16 devices" in next(iter(p.values()))


def test_pipeline_parallel_refused_on_cpu():
    p = problems({"cluster": {"devices_per_node": 2, "nodes": 2}, "arms": [{**DEMO_ARM, "engine": {"pipeline_parallel_size": 2}}]})
    assert "not supported by vLLM's CPU backend" in next(iter(p.values()))


def test_route_weights_must_sum_to_100():
    p = problems({"arms": [DEMO_ARM, {**DEMO_ARM, "name": "b"}],
                  "routes": [{"name": "r", "arms": [{"arm": "a", "weight": 60}, {"arm": "b", "weight": 30}]}]})
    assert p == {"routes[r]": "weights must sum to 100, got 90 (a=60, b=30)"}


def test_route_naming_unknown_arm():
    p = problems({"arms": [DEMO_ARM], "routes": [{"name": "r", "arms": [{"arm": "zzz", "weight": 100}]}]})
    assert "unknown arm(s) ['zzz']" in next(iter(p.values()))


def test_duplicate_names_across_arms_and_routes():
    p = problems({"arms": [DEMO_ARM, DEMO_ARM]})
    assert "duplicate arm/route name(s) ['a']" in next(iter(p.values()))
    p = problems({"arms": [DEMO_ARM], "routes": [{"name": "a", "arms": [{"arm": "a", "weight": 100}]}]})
    assert "['a']" in next(iter(p.values()))


def test_missing_model_path_only_checked_where_it_runs(tmp_path):
    data = {"arms": [{"name": "a", "model": {"path": str(tmp_path / "nope")}}]}
    assert parse_fleet(data).arms[0].model.path  # Helm values: paths live in pods
    p = problems(data, check_paths=True)
    assert p == {"arms[a].model.path": f"model path '{tmp_path / 'nope'}' does not exist or has no config.json"}


def test_model_source_needs_exactly_one_kind():
    p = problems({"arms": [{"name": "a", "model": {"demo": "smollm2-135m-instruct", "hf": "x/y"}}]})
    assert "exactly one of path, demo, hf" in p["arms[a].model"]


def test_bad_names_and_bounds():
    p = problems({"arms": [{**DEMO_ARM, "name": "Bad_Name"}]})
    assert "not a valid name" in p["arms[Bad_Name].name"]
    p = problems({"arms": [{**DEMO_ARM, "replicas": {"min": 3, "max": 2}}]})
    assert p == {"arms[a].replicas": "min (3) is larger than max (2)"}


def test_engine_extra_cannot_shadow_typed_fields():
    p = problems({"arms": [{**DEMO_ARM, "engine": {"extra": {"max_num_seqs": 3}}}]})
    assert "set ['max_num_seqs'] as engine fields" in p["arms[a].engine.extra"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], capture_output=True, text=True)


def test_cli_validate_exit_codes(tmp_path):
    good = _cli("validate")
    assert good.returncode == 0 and "valid fleet 'demo'" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"arms": [{**DEMO_ARM, "replicas": {"min": 2, "max": 1}}]}))
    out = _cli("validate", str(bad))
    assert out.returncode == 2
    assert "arms[a].replicas: min (2) is larger than max (1)" in out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("arms: [\n")
    assert _cli("validate", str(broken)).returncode == 2
    assert _cli("validate", str(tmp_path / "absent.yaml")).returncode == 2


FLEET_GLOBS = {"benchmarks/fleets/*.yaml": 5, "cluster/fleets/*.yaml": 1, "tests/e2e/fleets/*.yaml": 1}


@pytest.mark.parametrize("pattern,at_least", FLEET_GLOBS.items())
def test_fleet_files_in_repo_validate(pattern, at_least):
    root = Path(__file__).resolve().parents[2]
    paths = sorted(root.glob(pattern))
    assert len(paths) >= at_least, f"{pattern} matched {paths}: a moved folder would silently validate nothing"
    for path in paths:
        fleet = load_fleet(path)
        assert fleet.arms and fleet.routes, path


def test_helm_example_fleets_validate():
    root = Path(__file__).resolve().parents[2]
    paths = sorted(root.glob("helm/corral/examples/*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        parse_fleet(yaml.safe_load(path.read_text())["fleet"])


# What `corral up` adds to validation before anything starts (serving/local.py parallelism_check), and
# engine arguments corral forces whatever the spec says (serving/app.py llm_config_dict).

def _model_dir(tmp_path, heads, kv_heads):
    d = tmp_path / f"m{heads}-{kv_heads}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_attention_heads": heads, "num_key_value_heads": kv_heads}))
    return d


def _tp_fleet(model, tp):
    return parse_fleet({"cluster": {"devices_per_node": 4},
                        "arms": [{"name": "a", "model": model, "engine": {"tensor_parallel_size": tp}}]})


@pytest.mark.parametrize("heads,kv,tp,bad", [
    (9, 3, 2, "num_attention_heads=9, num_key_value_heads=3"),  # SmolLM2-135M's heads on 2 cores
    (8, 2, 4, "num_key_value_heads=2"),
    (6, 6, 4, "num_attention_heads=6, num_key_value_heads=6"),
])
def test_up_refuses_tp_that_does_not_divide_the_heads(tmp_path, heads, kv, tp, bad):
    fleet = _tp_fleet({"path": str(_model_dir(tmp_path, heads, kv))}, tp)
    with pytest.raises(LocalError) as info:
        parallelism_check(fleet)
    assert info.value.code == 2
    assert str(info.value) == f"arms[a].engine.tensor_parallel_size={tp} does not divide the model's {bad}"


@pytest.mark.parametrize("heads,kv,tp", [(8, 4, 4), (9, 3, 3), (4, 4, 2)])
def test_up_accepts_tp_dividing_both_head_counts(tmp_path, heads, kv, tp):
    assert parallelism_check(_tp_fleet({"path": str(_model_dir(tmp_path, heads, kv))}, tp)) == []


def test_hf_arm_before_download_is_said_not_silently_skipped(tmp_path):
    said = []
    fleet = _tp_fleet({"hf": "meta-llama/Meta-Llama-3-8B-Instruct"}, 4)
    notes = parallelism_check(fleet, tmp_path, said.append)
    assert notes == said and len(notes) == 1
    assert notes[0].startswith("arms[a].engine.tensor_parallel_size=4 not checked against the model's heads")
    assert "vLLM refuses" in notes[0]


def _dtype_fleet(device, *dtypes):
    return parse_fleet({"cluster": {"device": device},
                        "arms": [{**DEMO_ARM, "name": f"a{i}", "engine": {"dtype": d}} for i, d in enumerate(dtypes)]})


def test_up_warns_about_bf16_cpu_arms_only_on_a_cpu_with_amx():
    """vLLM 0.32 takes its AMX attention kernel for bf16 (and `auto`) on a CPU with AMX tiles
    (vllm/v1/attention/backends/cpu_attn.py _get_attn_isa); the check names each such arm, and asks
    whether AMX is usable only when a CPU arm is bf16 or auto."""
    said, asked = [], []

    def amx(answer: bool):
        return lambda: asked.append(answer) or answer

    fleet = _dtype_fleet("cpu", "bfloat16", "auto", "float32")
    notes = cpu_dtype_check(fleet, amx(True), said.append)
    assert [n.split(":")[0] for n in notes] == ["arms[a0].engine.dtype=bfloat16", "arms[a1].engine.dtype=auto"]
    assert said == [f"warning: {n}" for n in notes]
    assert cpu_dtype_check(fleet, amx(False)) == []  # no AMX: the vector kernels
    asked.clear()
    assert cpu_dtype_check(_dtype_fleet("gpu", "bfloat16"), amx(True)) == []  # GPU arms
    assert cpu_dtype_check(_dtype_fleet("cpu", "float32"), amx(True)) == []  # float32 only
    assert asked == []  # nothing to warn about: torch is not asked


def test_amx_check_asks_what_vllm_asks(monkeypatch):
    """torch's AMX check (run in a child interpreter) can only say yes where the CPU has the tiles;
    torch's answer decides, and the CPU's flag only where torch cannot answer."""
    from corral.serving import _ray_compat, local

    if _ray_compat.torch_amx_tile_supported():
        assert "amx_tile" in local.cpu_flags()
    monkeypatch.setattr(local, "cpu_flags", lambda: frozenset({"avx512f", "amx_tile"}))
    for torch_says, expected in ((False, False), (True, True), (None, True)):
        monkeypatch.setattr(_ray_compat, "torch_amx_tile_supported", lambda answer=torch_says: answer)
        assert local.amx_tiles() is expected
    monkeypatch.setattr(local, "cpu_flags", lambda: frozenset({"avx2"}))
    assert local.amx_tiles() is False  # torch cannot answer, no tiles in the flags


def test_request_logging_is_forced_off_whatever_the_spec_says():
    fleet = parse_fleet({"arms": [{**DEMO_ARM, "engine": {"extra": {"enable_log_requests": True}}}]})
    assert llm_config_dict(fleet.arms[0], fleet)["engine_kwargs"]["enable_log_requests"] is False
