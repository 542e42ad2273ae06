"""Golden prompts and their scoring rules (pure, no I/O).

One home for how a reply to a golden prompt is judged, used by the rollout's quality gate
(`corral.rollout.quality`, which runs a golden set against each arm) and by the ingress's shadow
copies (`corral.serving.shadow`, which scores the candidate's answers to user requests whose
prompt is a golden prompt).

`match` is the scoring rule: `contains` (case-insensitive substring), `exact` (case-insensitive,
surrounding whitespace/punctuation ignored), `regex` (Python `re.search`, case-insensitive) or
`number` (the first number in the reply equals an answer). A prompt scores 1 if any answer
matches, else 0.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal, get_args

Match = Literal["contains", "exact", "regex", "number"]
MATCH_RULES: tuple[str, ...] = get_args(Match)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class GoldenPrompt:
    """One line of a golden set (JSONL: `{"id", "prompt", "answers", "match", "max_tokens"}`)."""

    id: str
    """Name shown in reports."""
    prompt: str
    """The user message, sent as a chat's only message."""
    answers: tuple[str, ...]
    """Acceptable answers; the reply scores 1 if any matches under `match`."""
    match: Match = "contains"
    """The scoring rule (module docstring)."""
    max_tokens: int = 16
    """Reply length the golden-set run asks for."""


def score(prompt: GoldenPrompt, reply: str) -> float:
    """1.0 if the reply matches one of the prompt's answers under its rule, else 0.0."""
    return score_reply(prompt.match, prompt.answers, reply)


def score_reply(match: str, answers: tuple[str, ...] | list[str], reply: str) -> float:
    text = reply.strip()
    if match == "number":
        found = _NUMBER.search(text.replace(",", ""))
        return float(found is not None and any(float(found.group()) == float(a) for a in answers))
    if match == "regex":
        return float(any(re.search(a, text, re.IGNORECASE) for a in answers))
    if match == "exact":
        norm = re.sub(r"^\W+|\W+$", "", text).lower()
        return float(any(norm == a.lower() for a in answers))
    return float(any(a.lower() in text.lower() for a in answers))


def prompt_key(text: str) -> str:
    """The key a prompt is recognised by: runs of whitespace folded to one space, ends
    stripped, then a 16-hex-digit blake2b digest (so the ingress's setting need not carry the
    prompts' text)."""
    folded = _SPACE.sub(" ", text).strip()
    return hashlib.blake2b(folded.encode(), digest_size=8).hexdigest()
