"""Durable rollout state: the state machine's state, an event history and queued commands.

One JSON document per rollout. Locally it is a file replaced atomically (write a temp
file, fsync, rename) under an advisory lock; on Kubernetes it is an annotation on the
RayService, written with the object's resourceVersion so concurrent writers (controller,
CLI) conflict and retry instead of overwriting each other.

Writers never overwrite blindly: `update(fn)` reads, applies `fn`, writes, and retries on
conflict. The CLI appends commands this way; the controller replaces state/events and
drops only the commands it has handled.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict, Field

from corral.rollout.machine import Command, RolloutState

MAX_EVENTS = 200
"""Events kept per rollout (annotations are limited to 256 KiB per object)."""
ANNOTATION = "corral.dev/rollout"


class StoreConflict(RuntimeError):
    """Somebody else wrote the document between our read and our write."""


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: float
    operator: str
    reason: str
    phase: str
    step: int
    weights: dict[str, int] = Field(default_factory=dict)


class CommandRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int
    op: str
    full: bool = False
    reason: str = ""
    at: float = 0.0

    def to_command(self) -> Command:
        return Command(seq=self.seq, op=self.op, full=self.full, reason=self.reason)  # type: ignore[arg-type]


class RolloutDoc(BaseModel):
    """Everything stored about one rollout."""

    model_config = ConfigDict(extra="forbid")

    id: str
    created_at: float
    spec: dict[str, Any]
    """The RolloutSpec the rollout was started with (a fleet edit mid-rollout does not change it)."""
    state: RolloutState = Field(default_factory=RolloutState)
    events: list[Event] = Field(default_factory=list)
    commands: list[CommandRecord] = Field(default_factory=list)
    next_seq: int = 1

    def add_event(self, event: Event) -> None:
        self.events = (self.events + [event])[-MAX_EVENTS:]

    def enqueue(self, op: str, full: bool = False, reason: str = "", at: float = 0.0) -> int:
        seq = max(self.next_seq, self.state.last_command_seq + 1)
        self.commands.append(CommandRecord(seq=seq, op=op, full=full, reason=reason, at=at))
        self.next_seq = seq + 1
        return seq

    def pending_commands(self) -> tuple[Command, ...]:
        return tuple(c.to_command() for c in self.commands if c.seq > self.state.last_command_seq)


class RolloutStore(Protocol):
    def load(self) -> RolloutDoc | None: ...

    def update(self, fn: Callable[[RolloutDoc | None], RolloutDoc | None]) -> RolloutDoc | None:
        """Read, apply `fn`, write the result (None = leave as is); atomic against other writers."""
        ...


class FileStore:
    """A JSON file replaced atomically; an advisory lock serialises read-modify-write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> RolloutDoc | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        return RolloutDoc.model_validate_json(text)

    def update(self, fn):
        with self._locked():
            doc = fn(self.load())
            if doc is not None:
                self._write(doc)
            return doc

    def _write(self, doc: RolloutDoc) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(doc.model_dump_json(indent=1))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: readers see the old or the new file, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


class RayServiceAnnotationStore:
    """The document in an annotation of the RayService (JSON), written with optimistic concurrency."""

    def __init__(self, name: str, namespace: str = "default", api=None, annotation: str = ANNOTATION,
                 retries: int = 5):
        if api is None:
            from kubernetes import client, config

            config.load_config()
            api = client.CustomObjectsApi()
        self.api, self.name, self.namespace = api, name, namespace
        self.annotation, self.retries = annotation, retries

    def _get(self) -> dict:
        return self.api.get_namespaced_custom_object("ray.io", "v1", self.namespace, "rayservices", self.name)

    def load(self) -> RolloutDoc | None:
        raw = ((self._get().get("metadata") or {}).get("annotations") or {}).get(self.annotation)
        return RolloutDoc.model_validate_json(raw) if raw else None

    def update(self, fn):
        from corral.rollout.kube import RayServiceConflict, patch_rayservice

        def change(obj: dict):
            raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(self.annotation)
            doc = fn(RolloutDoc.model_validate_json(raw) if raw else None)
            body = None if doc is None else {"metadata": {"annotations": {self.annotation: doc.model_dump_json()}}}
            return body, doc

        try:
            return patch_rayservice(self.api, self.namespace, self.name, change, self.retries)
        except RayServiceConflict as exc:
            raise StoreConflict(f"rollout annotation: {exc}") from None

