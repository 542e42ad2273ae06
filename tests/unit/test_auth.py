"""API keys: hashed storage, 401/403, token-bucket limits with Retry-After."""

import pytest

from corral.cluster.spec import SpecError, parse_fleet
from corral.serving.auth import KeyRing, hash_key, new_key

KEY = new_key()
AUTH = {"enabled": True, "keys": [
    {"name": "team-a", "sha256": hash_key(KEY), "requests_per_minute": 2, "tokens_per_minute": 100},
    {"name": "ops", "sha256": hash_key("admin-key"), "scopes": ["inference", "admin"]},
]}


def test_unknown_or_missing_keys_are_401_only_when_required():
    ring = KeyRing.from_config(AUTH)
    assert ring.identify(None)[1].status == 401
    assert ring.identify("nope")[1].message == "invalid API key"
    digest, denied = ring.identify(KEY)
    assert denied is None and digest == hash_key(KEY)
    open_ring = KeyRing.from_config({"enabled": False, "keys": AUTH["keys"]})
    assert open_ring.identify(None) == (None, None)


def test_request_rate_limit_with_retry_after_and_refill():
    ring = KeyRing.from_config(AUTH)
    digest = hash_key(KEY)
    assert ring.check(digest, now=0.0) is None
    assert ring.check(digest, now=0.1) is None
    denied = ring.check(digest, now=0.2)
    assert denied.status == 429 and "2 requests/minute" in denied.message
    assert 29 <= denied.retry_after_s <= 30  # one request refills in 30 s at 2/minute
    assert ring.check(digest, now=31.0) is None


def test_token_limit_charges_after_the_response():
    ring = KeyRing.from_config(AUTH)
    digest = hash_key(KEY)
    assert ring.check(digest, now=0.0) is None
    ring.charge_tokens(digest, 250, now=1.0)  # way over 100 tokens/minute
    denied = ring.check(digest, now=2.0)
    assert denied.status == 429 and "tokens/minute" in denied.message and denied.retry_after_s >= 60


def test_admin_scope():
    ring = KeyRing.from_config(AUTH)
    assert ring.check(hash_key(KEY), 0.0, scope="admin").status == 403
    assert ring.check(hash_key("admin-key"), 0.0, scope="admin") is None


def test_reconfigure_keeps_buckets_of_surviving_keys():
    ring = KeyRing.from_config(AUTH)
    digest = hash_key(KEY)
    ring.check(digest, 0.0)
    ring.check(digest, 0.1)
    again = KeyRing.from_config(AUTH, previous=ring)
    assert again.check(digest, 0.2).status == 429  # a weight change does not reset limits


def test_auth_spec_validation():
    base = {"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}}]}
    with pytest.raises(SpecError, match="no keys are defined"):
        parse_fleet({**base, "auth": {"enabled": True}})
    with pytest.raises(SpecError, match="auth.keys"):
        parse_fleet({**base, "auth": {"keys": [{"name": "x", "sha256": "not-a-hash"}]}})
    fleet = parse_fleet({**base, "auth": AUTH})
    assert fleet.auth.keys[1].scopes == ["inference", "admin"]


def test_cli_keys_add_stores_only_the_hash(tmp_path):
    import subprocess
    import sys

    import yaml

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}}]}))
    out = subprocess.run([sys.executable, "-m", "corral.cli", "keys", "add", "team-a", str(fleet), "--rpm", "5", "--enable"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    key = out.stdout.splitlines()[0]
    text = fleet.read_text()
    assert key not in text and hash_key(key) in text
    assert parse_fleet(yaml.safe_load(text)).auth.enabled
    bad = subprocess.run([sys.executable, "-m", "corral.cli", "keys", "add", "team-a", str(fleet)], capture_output=True, text=True)
    assert bad.returncode == 2 and "duplicate key name" in bad.stderr
    assert hash_key(key) in fleet.read_text()  # the failed add left the file as it was
