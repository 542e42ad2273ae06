"""The quality gate: a golden prompt set run against arms over the OpenAI HTTP API, and scoring.

A golden set is a JSONL file, one prompt per line:
    {"id": "...", "prompt": "...", "answers": ["Paris"], "match": "contains"}
`match` is the scoring rule (`corral.common.golden`: contains, exact, regex, number). A prompt
scores 1 if any answer matches, else 0; an arm's score is the mean. Requests pin the arm
with `model: <arm name>` at temperature 0, so both arms see identical prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from corral.common.golden import MATCH_RULES, GoldenPrompt, prompt_key, score
from corral.common.openai_http import post
from corral.rollout.machine import QualityScores

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def resolve_golden_path(name: str, base_dir: Path | None = None) -> Path:
    """`builtin:<name>` -> the shipped file; a relative path is taken from `base_dir` (the fleet file's folder)."""
    if name.startswith("builtin:"):
        return GOLDEN_DIR / f"{name.removeprefix('builtin:')}.jsonl"
    p = Path(name).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


def local_endpoint(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to `host` (a wildcard bind
    address such as 0.0.0.0 is no address to connect to: use the loopback instead)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def load_golden(path: Path) -> list[GoldenPrompt]:
    prompts = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(line)
            p = GoldenPrompt(id=str(d["id"]), prompt=str(d["prompt"]), answers=tuple(map(str, d["answers"])),
                             match=d.get("match", "contains"), max_tokens=int(d.get("max_tokens", 16)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: bad golden prompt ({exc!r}): {line[:80]}") from None
        if p.match not in MATCH_RULES or not p.answers:
            raise ValueError(f"{path}:{lineno}: match {p.match!r} unknown or no answers")
        prompts.append(p)
    if not prompts:
        raise ValueError(f"{path}: no golden prompts")
    return prompts


def golden_rules(prompts: list[GoldenPrompt]) -> list[dict[str, object]]:
    """The golden set as the ingress's shadow setting carries it (`serving/shadow.py` GoldenRule):
    each prompt's key and rule, not its text."""
    return [{"key": prompt_key(p.prompt), "match": p.match, "answers": list(p.answers)} for p in prompts]


class GoldenSetRunner:
    """Runs a golden set against arms through the fleet's OpenAI-compatible endpoint
    (`corral.common.openai_http`), sending `api_key` as a bearer token when one is given."""

    def __init__(self, base_url: str, prompts: list[GoldenPrompt], timeout_s: float = 60.0, session=None,
                 api_key: str | None = None, on_prompt: Callable[[], None] | None = None):
        """`api_key`: sent as `Authorization: Bearer <key>` (None: no header, for fleets without auth).
        `on_prompt` is called after each prompt (a long run keeps the controller's heartbeat fresh)."""
        import requests

        self.base_url = base_url.rstrip("/")
        self.prompts, self.timeout_s = prompts, timeout_s
        self.session = session or requests.Session()
        self.api_key = api_key
        self.last_replies: dict[str, dict[str, str]] = {}
        self.on_prompt = on_prompt

    def ask(self, arm: str, prompt: GoldenPrompt) -> str:
        """The arm's reply; "" when the arm failed it (5xx); GoldenSetError when the endpoint did
        (unreachable, or refusing the request: a bad key, an unknown arm)."""
        reply = post(self.session, self.base_url, timeout_s=self.timeout_s, api_key=self.api_key, body={
            "model": arm, "messages": [{"role": "user", "content": prompt.prompt}],
            "temperature": 0, "max_tokens": prompt.max_tokens})
        if reply.status is not None and reply.status >= 500:
            return ""  # the arm failed this prompt: scored 0, not an infrastructure error
        if reply.error:
            raise GoldenSetError(reply.error)
        return reply.text

    def run(self, arms: list[str]) -> QualityScores:
        scores = {}
        try:
            for arm in arms:
                replies = {}
                for p in self.prompts:
                    replies[p.id] = self.ask(arm, p)
                    if self.on_prompt is not None:
                        self.on_prompt()
                self.last_replies[arm] = replies
                scores[arm] = sum(score(p, replies[p.id]) for p in self.prompts) / len(self.prompts)
        except GoldenSetError as exc:
            return QualityScores(error=f"golden set against {self.base_url}: {exc}")
        return QualityScores(scores, prompts=len(self.prompts))


class GoldenSetError(Exception):
    """The endpoint, not an arm, failed a golden-set request."""
