"""Choosing an arm for a request: weighted, sticky, and minimally disruptive.

Weighted rendezvous hashing (highest random weight): every (key, arm) pair gets a
pseudo-random u in (0, 1) and the score w / -ln(u); the arm with the highest score wins.
Each arm wins with probability weight / sum(weights), and raising one arm's weight only
raises that arm's scores, so the only users who move are those who move *to* it: going
50 -> 70 on a candidate keeps everyone already on the candidate and moves just enough
baseline users. Pure functions, no state.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from typing import Any


def _unit(key: str, arm: str) -> float:
    return _unit_from(_key_hash(key), arm)


def _key_hash(key: str) -> Any:
    """The hash state of `key` and the separator, to be copied once per arm."""
    return hashlib.blake2b(key.encode() + b"\x00", digest_size=8)


def _unit_from(prefix: Any, arm: str) -> float:
    h = prefix.copy()
    h.update(arm.encode())  # = blake2b(f"{key}\x00{arm}")
    # Map 64 bits into the open interval (0, 1): ln(0) and ln(1) are both unusable.
    return (int.from_bytes(h.digest(), "big") + 0.5) / 2.0**64


def pick_arm(weights: Mapping[str, int], key: str | None, rng: random.Random | None = None) -> str:
    """The arm for one request. `key` (user, session or API key) makes it sticky; None = per request."""
    live = {arm: w for arm, w in weights.items() if w > 0}
    if not live:
        raise ValueError(f"no arm has a positive weight: {dict(weights)}")
    if key is None:
        arms = list(live)
        return (rng or random).choices(arms, weights=[live[a] for a in arms])[0]
    if len(live) == 1:  # the one arm wins whatever its score
        return next(iter(live))
    prefix = _key_hash(key)
    return max(live, key=lambda arm: live[arm] / -math.log(_unit_from(prefix, arm)))


def failover_weights(weights: Mapping[str, int], down: set[str] | frozenset[str]) -> dict[str, int]:
    """A route's weights with its down arms removed: their share goes to the healthy arms in
    proportion to the healthy arms' weights (empty when no arm with a positive weight is up).

    With rendezvous hashing (`pick_arm`) removing an arm moves only that arm's users: users of
    healthy arms keep their arm, and when the arm is back its users return to it.
    """
    return {arm: w for arm, w in weights.items() if w > 0 and arm not in down}
