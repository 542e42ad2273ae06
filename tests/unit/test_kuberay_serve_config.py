"""The Helm-rendered serveConfigV2 has the shape of the local Serve config, so that changes made
through `helm upgrade` or by the rollout controller apply in place.

Ray restarts every replica of an application whose code version changes; the code version is a hash
of `import_path`, `runtime_env`, `args` and every deployment's autoscaling *policy*
(ray/serve/_private/deploy_utils.py, `get_app_code_version`). So the fleet's live parts (routes,
auth, rollout) must not be in `args`, and each arm's autoscaling config, policy included, must be
present from the first render (a later first write of it would change the version).
"""

from __future__ import annotations

import copy

import pytest
import yaml
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.schema import ServeApplicationSchema
from test_helm_chart import CASES, CHART, by_kind, render, values_file

from corral.cluster.spec import parse_fleet
from corral.serving import app as serve_app
from corral.serving.auth import KeyRing, hash_key

TWO_ARMS = CHART / "examples" / "llama2-to-llama3-70b-rollout-2x8-h100.yaml"


def serve_config_of(docs) -> dict:
    (rs,) = by_kind(docs, "RayService")
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def app_of(docs) -> dict:
    (app,) = serve_config_of(docs)["applications"]
    return app


def code_version(app: dict) -> str:
    return get_app_code_version(ServeApplicationSchema.model_validate(app))


def deployments(app: dict) -> dict[str, dict]:
    return {d["name"]: d for d in app["deployments"]}


def given_values(case) -> dict:
    return yaml.safe_load(CASES[case][0].read_text()) if CASES[case] else yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.mark.parametrize("case", CASES)
def test_rendered_config_has_the_local_shape(case):
    app = app_of(render(CASES[case]))
    fleet = parse_fleet(given_values(case)["fleet"], source=case)
    local = serve_app.serve_config(fleet)["applications"][0]
    assert set(app) == set(local)
    assert {k: app[k] for k in ("name", "route_prefix", "import_path")} == {
        k: local[k] for k in ("name", "route_prefix", "import_path")}
    # The live parts are not in args (they would be hashed into the code version).
    assert not {"routes", "rollout", "auth"} & set(app["args"]["fleet"])
    assert parse_fleet(app["args"]["fleet"], source="args") == parse_fleet(local["args"]["fleet"], source="local")
    # The same overrides as the local config, complete from the first render.
    mine, theirs = deployments(app), deployments(local)
    assert set(mine) == set(theirs)
    for name, d in theirs.items():
        if "autoscaling_config" in d:
            assert mine[name]["autoscaling_config"] == d["autoscaling_config"], name
    assert mine["CorralIngress"]["user_config"]["routes"] == theirs["CorralIngress"]["user_config"]["routes"]
    # The rendered application validates as a Serve application config (Ray's own schema).
    ServeApplicationSchema.model_validate(app)


def test_autoscaling_overrides_follow_the_arm_settings(tmp_path):
    given = yaml.safe_load(TWO_ARMS.read_text())
    arm = given["fleet"]["arms"][1]
    arm["replicas"] = {"min": 1, "max": 3, "initial": 2}
    arm["autoscaling"] = {"target_ongoing_requests": 32, "ttft_p95_s": 4.0, "downscale_delay_s": 600}
    given["fleet"]["arms"][0]["autoscaling"] = {"policy": "serve-default", "upscale_delay_s": 5}
    app = app_of(render([values_file(tmp_path, given)]))
    local = serve_app.serve_config(parse_fleet(given["fleet"], source="x"))["applications"][0]
    mine, theirs = deployments(app), deployments(local)
    for name in theirs:
        if name.startswith("LLMServer:"):
            assert mine[name]["autoscaling_config"] == theirs[name]["autoscaling_config"], name


def _changed(given: dict, change) -> dict:
    out = copy.deepcopy(given)
    change(out)
    return out


def _weights(v):
    v["fleet"]["routes"][0]["arms"][0]["weight"] = 75
    v["fleet"]["routes"][0]["arms"][1]["weight"] = 25


def _keys(v):
    v["apiKeys"] = {"keys": "sk-corral-rotated-key-1,sk-corral-rotated-key-2"}


def _rollout(v):
    v["fleet"]["rollout"]["steps"] = [{"weight": 50, "bake_s": 60}, {"weight": 100, "bake_s": 0}]


def _auth(v):
    v["fleet"]["auth"] = {"enabled": True, "keys": [{"name": "team-a", "sha256": hash_key("sk-team-a")}]}


CHANGES = {"weights": _weights, "keys": _keys, "rollout": _rollout, "fleet-auth": _auth}


@pytest.mark.parametrize("change", CHANGES)
def test_helm_side_live_changes_keep_every_deployment_version(change, tmp_path):
    given = yaml.safe_load(TWO_ARMS.read_text())
    given["apiKeys"] = {"keys": "sk-corral-initial-key"}
    before_docs = render([values_file(tmp_path, given, "before.yaml")])
    after_docs = render([values_file(tmp_path, _changed(given, CHANGES[change]), "after.yaml")])
    assert before_docs != after_docs, "the change must show in the rendered chart"
    # (A rollout change reaches only the controller's fleet ConfigMap, not the Serve config.)
    assert code_version(app_of(before_docs)) == code_version(app_of(after_docs))


def test_controller_writes_keep_the_version_of_a_helm_render():
    """The rollout controller edits the rendered config with serving.app's functions."""
    app = app_of(render([TWO_ARMS]))
    version = code_version(app)
    assert serve_app.set_route_weights(app, "llama", {"llama-2-70b-chat": 50, "llama-3-70b-instruct": 50})
    assert serve_app.set_replica_floor(app, "llama-3-70b-instruct", 1) is False  # already min 1
    assert code_version(app) == version
    assert serve_app.route_weights(app) == {"llama": {"llama-2-70b-chat": 50, "llama-3-70b-instruct": 50}}


def test_an_arm_change_does_change_the_version(tmp_path):
    """The test above can fail: the version does move when the weights of an engine change."""
    given = yaml.safe_load(TWO_ARMS.read_text())
    before = code_version(app_of(render([values_file(tmp_path, given, "a.yaml")])))
    given["fleet"]["arms"][1]["engine"]["max_model_len"] = 4096
    assert code_version(app_of(render([values_file(tmp_path, given, "b.yaml")]))) != before


def test_chart_keys_reach_the_ingress_as_hashes(tmp_path):
    docs = render([values_file(tmp_path, {"apiKeys": {"keys": "sk-one,sk-two"}})])
    auth = deployments(app_of(docs))["CorralIngress"]["user_config"]["auth"]
    ring = KeyRing.from_config(auth)
    assert ring.required
    assert ring.identify("sk-one") == (hash_key("sk-one"), None)
    assert ring.identify("sk-two")[1] is None
    assert ring.identify("sk-wrong")[1].status == 401
    assert ring.identify(None)[1].status == 401
    # Only hashes: no key appears anywhere in the Serve config.
    text = by_kind(docs, "RayService")[0]["spec"]["serveConfigV2"]
    assert "sk-one" not in text and "sk-two" not in text


def test_a_generated_key_is_the_one_hashed(tmp_path):
    import base64

    docs = render()
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-api-keys")]
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert key.startswith("sk-corral-") and len(key) > 30
    ring = KeyRing.from_config(deployments(app_of(docs))["CorralIngress"]["user_config"]["auth"])
    assert ring.identify(key) == (hash_key(key), None)


def test_fleet_auth_keys_are_kept_next_to_the_chart_keys(tmp_path):
    fleet = yaml.safe_load(TWO_ARMS.read_text())["fleet"]
    fleet["auth"] = {"enabled": True, "keys": [{"name": "team-a", "sha256": hash_key("sk-team-a"),
                                                "requests_per_minute": 60}]}
    docs = render([values_file(tmp_path, {**yaml.safe_load(TWO_ARMS.read_text()), "fleet": fleet,
                                          "apiKeys": {"keys": "sk-chart"}})])
    ring = KeyRing.from_config(deployments(app_of(docs))["CorralIngress"]["user_config"]["auth"])
    assert ring.identify("sk-team-a")[1] is None and ring.identify("sk-chart")[1] is None
    assert ring.keys[hash_key("sk-team-a")]["requests_per_minute"] == 60
