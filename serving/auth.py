"""API keys and per-key rate limits for the ingress (pure logic; the ingress does the I/O).

Keys are stored only as SHA-256 hashes (in the fleet spec's `auth.keys`, which reaches the
ingress through Serve's user_config), so a fleet file or Helm values never hold a usable key.
Limits are token buckets per key and per ingress replica: with N ingress replicas a key can
use up to N times its limit.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field

KEY_PREFIX = "sk-corral-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


@dataclass
class Bucket:
    """A token bucket refilled continuously: `capacity` per minute."""

    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` is available (0 if it is now). A shortfall within float rounding
        of the refill (`(t + 60) - t` need not be 60 exactly) is none: a client that waited the
        Retry-After it was given is admitted."""
        missing = amount - self.level
        return 0.0 if missing <= _ROUNDING else missing * 60.0 / self.capacity


_ROUNDING = 1e-9
"""Tokens of shortfall that are float rounding, not a limit."""


@dataclass
class Denied:
    status: int
    message: str
    retry_after_s: int | None = None


@dataclass
class KeyRing:
    """Known keys (by hash) and their buckets. `check` before a request, `charge` after it."""

    keys: dict[str, dict] = field(default_factory=dict)  # sha256 -> {name, scopes, requests_per_minute, tokens_per_minute}
    required: bool = False
    _requests: dict[str, Bucket] = field(default_factory=dict)
    _tokens: dict[str, Bucket] = field(default_factory=dict)

    @classmethod
    def from_config(cls, auth: dict | None, previous: KeyRing | None = None) -> KeyRing:
        auth = auth or {}
        ring = cls(keys={k["sha256"]: k for k in auth.get("keys", [])}, required=bool(auth.get("enabled")))
        if previous is not None:  # a reconfigure keeps the buckets of keys that still exist
            ring._requests = {h: b for h, b in previous._requests.items() if h in ring.keys}
            ring._tokens = {h: b for h, b in previous._tokens.items() if h in ring.keys}
        return ring

    def identify(self, bearer: str | None) -> tuple[str | None, Denied | None]:
        """(key hash, None) for a known key; (None, None) when auth is off and no key is given."""
        if not bearer:
            return None, Denied(401, "missing API key: send 'Authorization: Bearer <key>'") if self.required else None
        digest = hash_key(bearer)
        if digest in self.keys:
            return digest, None
        return None, Denied(401, "invalid API key") if self.required else None

    def check(self, digest: str | None, now: float, scope: str = "inference") -> Denied | None:
        if digest is None:
            return Denied(403, f"this operation needs an API key with scope {scope!r}") if scope != "inference" else None
        key = self.keys[digest]
        if scope not in key.get("scopes", ["inference"]):
            return Denied(403, f"API key {key['name']!r} lacks scope {scope!r}")
        for buckets, limit_field, amount in ((self._requests, "requests_per_minute", 1.0), (self._tokens, "tokens_per_minute", 1.0)):
            limit = key.get(limit_field)
            if not limit:
                continue
            bucket = buckets.setdefault(digest, Bucket(limit, limit, now))
            bucket.refill(now)
            wait = bucket.wait_s(amount)
            if wait > 0:
                what = "requests" if limit_field.startswith("requests") else "tokens"
                return Denied(429, f"rate limit of {limit} {what}/minute exceeded for key {key['name']!r}",
                              retry_after_s=max(1, math.ceil(wait)))
        if key.get("requests_per_minute"):
            self._requests[digest].level -= 1.0
        return None

    def charge_tokens(self, digest: str | None, tokens: int, now: float) -> None:
        """Deduct a finished request's tokens (the bucket may go negative: later requests wait)."""
        if digest is None or not self.keys.get(digest, {}).get("tokens_per_minute"):
            return
        limit = self.keys[digest]["tokens_per_minute"]
        bucket = self._tokens.setdefault(digest, Bucket(limit, limit, now))
        bucket.refill(now)
        bucket.level -= tokens


@dataclass
class InFlight:
    """Requests in flight per API key and per route, against their concurrency limits.

    `admit` takes a slot on both (or neither) and `release` gives them back; the ingress
    releases when the response (or the stream) ends, however it ends.
    """

    by_key: dict[str, int] = field(default_factory=dict)
    by_route: dict[str, int] = field(default_factory=dict)

    def admit(self, key: str | None, key_limit: int | None, route: str, route_limit: int | None,
              retry_after_s: int, key_name: str | None = None) -> Denied | None:
        if key is not None and key_limit is not None and self.by_key.get(key, 0) >= key_limit:
            return Denied(429, f"too many concurrent requests for key {key_name or 'anonymous'!r} "
                               f"(limit {key_limit})", retry_after_s=retry_after_s)
        if route_limit is not None and self.by_route.get(route, 0) >= route_limit:
            return Denied(429, f"too many concurrent requests on {route!r} (limit {route_limit})",
                          retry_after_s=retry_after_s)
        if key is not None:
            self.by_key[key] = self.by_key.get(key, 0) + 1
        self.by_route[route] = self.by_route.get(route, 0) + 1
        return None

    def release(self, key: str | None, route: str) -> None:
        for counts, name in ((self.by_key, key), (self.by_route, route)):
            if name is None or name not in counts:
                continue
            counts[name] -= 1
            if counts[name] <= 0:
                del counts[name]
