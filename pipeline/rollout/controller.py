"""The rollout controller: shadow, then traffic steps, then promoted; or rolled back.

Each step sets the canary's traffic, opens an analysis window, waits one interval and compares
the canary with the stable version on what live traffic did in that window:

- error rate: the canary's server errors may exceed the stable's by at most a margin;
- p99 latency: at most a factor of the stable's (with a floor, so microseconds don't count);
- assignment agreement: the share of rows both models put in the same cluster (ids are matched
  to the champion at registration, so equal ids mean the same segment);
- distance shift: the canary's median distance to its centroid against the stable's median on
  the same rows.

A failed check rolls the canary back at once, so a bad model is gone within one analysis
interval. A step with too little traffic to judge is extended; after ``max_extensions`` it
fails ("not enough traffic to judge" is not a pass).

The state is a JSON file written before every action (the intent) and after it; a controller
that dies mid-rollout and is restarted (``resume``) reads it, checks what the server actually
serves, and either continues the step it was in or rolls back: traffic is never left in a split
nobody owns. A file lock keeps two controllers off the same model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import registry
from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    LockBusy,
    atomic_write_json,
    file_lock,
    private_dir,
    utc_now_iso,
)
from pipeline.core.settings import Settings
from pipeline.rollout.backends.kubernetes import KServeBackend
from pipeline.rollout.backends.local import LocalBackend
from pipeline.rollout.base import (
    RolloutError,
    Step,
    Thresholds,
    analyse,
    parse_steps,
)

log = logging.getLogger(__name__)

ACTOR = "rollout-controller"


# ---- state ---------------------------------------------------------------------------------

@dataclass
class RolloutState:
    model: str
    version: str
    stable: str
    steps: list[str]
    step: int = 0
    phase: str = "loading"  # loading, analysing, promoting, rolling_back, done
    outcome: str | None = None  # promoted, rolled_back
    reason: str = ""
    history: list[dict] = field(default_factory=list)
    started_at: str = ""
    updated_at: str = ""
    controller: str = ""


def state_path(settings: Settings) -> Path:
    return settings.home / "rollout" / f"{settings.model_name}.json"


def read_state(settings: Settings) -> RolloutState | None:
    path = state_path(settings)
    if not path.exists():
        return None
    return RolloutState(**json.loads(path.read_text()))


class RolloutController:
    def __init__(self, settings: Settings, backend, *, steps: list[Step],
                 interval_s: float = 60.0, thresholds: Thresholds | None = None,
                 max_extensions: int = 3):
        thresholds = thresholds or Thresholds()
        self.settings = settings
        self.backend = backend
        self.steps = steps
        self.interval_s = interval_s
        self.thresholds = thresholds
        self.max_extensions = max_extensions

    # ---- entry points --------------------------------------------------------------------
    def start(self, version: str) -> RolloutState:
        """Roll ``version`` out from shadow to promoted, or back."""
        version = str(version)
        with self._locked():
            old = read_state(self.settings)
            if old is not None and old.phase != "done":
                raise RolloutError(f"a rollout of version {old.version} is unfinished (phase "
                                   f"{old.phase}, step {old.step}); run `kmeans rollout "
                                   f"--resume` first")
            routing = self.backend.routing()
            stable = routing["stable"]
            champion = self._champion()
            if champion is not None and stable != champion:
                raise RolloutError(f"the server serves version {stable} as stable but the "
                                   f"registry's champion is {champion}; fix that first")
            if version == stable:
                raise RolloutError(f"version {version} is already the stable version")
            now = utc_now_iso()
            state = RolloutState(self.settings.model_name, version, stable,
                                 [str(s) for s in self.steps], started_at=now,
                                 controller=f"{socket.gethostname()}:{os.getpid()}")
            self._save(state)
            if routing["canary"] not in (None, version):
                self.backend.drop(routing["canary"])
            self.backend.load(version)
            return self._drive(state)

    def resume(self) -> RolloutState | None:
        """Finish an interrupted rollout: continue its step if the server is in the state the
        file says, otherwise roll back. Returns None when nothing was in progress."""
        with self._locked():
            state = read_state(self.settings)
            if state is None or state.phase == "done":
                return None
            self.steps = [Step.parse(s) for s in state.steps]
            routing = self.backend.routing()
            log.warning("resuming the rollout of version %s at phase %s step %d; server "
                        "routing %s", state.version, state.phase, state.step, routing)
            if state.phase == "promoting":
                return self._promote(state, routing)
            if state.phase == "rolling_back":
                return self._roll_back(state, state.reason or "resumed an interrupted rollback")
            if routing["canary"] != state.version:
                if routing["stable"] == state.version:  # promoted on the server already
                    return self._promote(state, routing)
                return self._roll_back(state, f"resumed after a restart; the server's canary is "
                                              f"{routing['canary']}, not {state.version}")
            state.history.append({"at": utc_now_iso(), "event": "resumed", "step": state.step})
            return self._drive(state)

    # ---- the loop ------------------------------------------------------------------------
    def _drive(self, state: RolloutState) -> RolloutState:
        while state.step < len(self.steps):
            step = self.steps[state.step]
            state.phase = "analysing"
            self._save(state)
            self.backend.traffic(step)
            verdict = self._analyse_step(state, step)
            state.history.append({"at": utc_now_iso(), "step": str(step), **verdict})
            if verdict["verdict"] != "pass":
                return self._roll_back(state, f"step {step} failed: {verdict['reason']}")
            log.info("rollout of %s: step %s passed", state.version, step)
            state.step += 1
            self._save(state)
        return self._promote(state, self.backend.routing())

    def _analyse_step(self, state: RolloutState, step: Step) -> dict:
        self.backend.window()  # opens a fresh window for this step
        for _ in range(1 + self.max_extensions):
            time.sleep(self.interval_s)
            verdict = analyse(self.backend.window(), state.stable, state.version,
                              self.thresholds)
            if verdict["verdict"] != "wait":
                return verdict
            log.info("rollout of %s: step %s extended (%s)", state.version, step,
                     verdict["reason"])
        return {**verdict, "verdict": "fail",
                "reason": f"not enough traffic to judge after {1 + self.max_extensions} "
                          f"intervals ({verdict['reason']})"}

    def _promote(self, state: RolloutState, routing: dict) -> RolloutState:
        state.phase = "promoting"
        self._save(state)
        if routing["canary"] == state.version:
            self.backend.promote(state.version)
        if self._champion() != state.version:
            registry.promote(self.settings, state.version, actor=ACTOR,
                             reason=f"rollout passed {len(self.steps)} steps "
                                    f"({', '.join(state.steps)})",
                             figures={"rollout": state.history[-len(self.steps):]})
        return self._finish(state, "promoted", "every step passed")

    def _roll_back(self, state: RolloutState, reason: str) -> RolloutState:
        log.warning("rollout of %s rolled back: %s", state.version, reason)
        state.phase, state.reason = "rolling_back", reason
        self._save(state)
        routing = self.backend.routing()
        if routing["canary"] == state.version:
            self.backend.drop(state.version)
        registry.reject_challenger(self.settings, state.version, actor=ACTOR, reason=reason,
                                   figures={"rollout": state.history})
        return self._finish(state, "rolled_back", reason)

    def _finish(self, state: RolloutState, outcome: str, reason: str) -> RolloutState:
        state.phase, state.outcome, state.reason = "done", outcome, reason
        self._save(state)
        log.info("rollout of version %s: %s (%s)", state.version, outcome, reason)
        return state

    # ---- plumbing ------------------------------------------------------------------------
    def _champion(self) -> str | None:
        found = registry.alias_version(self.settings, "champion")
        return str(found.version) if found is not None else None

    def _save(self, state: RolloutState) -> None:
        state.updated_at = utc_now_iso()
        path = state_path(self.settings)
        private_dir(path.parent)  # owner-only, like the audit trail
        atomic_write_json(path, asdict(state), mode=PRIVATE_FILE_MODE)

    @contextlib.contextmanager
    def _locked(self):
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(state_path(self.settings).with_suffix(".lock")))
            except LockBusy:
                raise RolloutError(f"another rollout controller is running for "
                                   f"{self.settings.model_name!r}") from None
            yield

# ---- wiring from settings --------------------------------------------------------------------

def backend_for(settings: Settings):
    """The configured backend, or None for ``rollout_backend='none'``."""
    if settings.rollout.rollout_backend == "none":
        return None
    if settings.rollout.rollout_backend == "kubernetes":

        return KServeBackend.from_settings(settings)
    if settings.serving.admin_token is None:
        raise RolloutError("the local rollout backend needs KMEANS_ADMIN_TOKEN (the server's "
                           "admin token)")
    url = settings.rollout.serving_url or f"http://{settings.serving.serving_host}:{settings.serving.serving_port}"
    return LocalBackend(url, settings.serving.admin_token.get_secret_value())


def controller_for(settings: Settings, backend=None, *, steps: str | None = None,
                   interval_s: float | None = None) -> RolloutController:
    backend = backend or backend_for(settings)
    if backend is None:
        raise RolloutError("no rollout backend is configured: set KMEANS_ROLLOUT_BACKEND to "
                           "'local' or 'kubernetes'")
    return RolloutController(
        settings, backend, steps=parse_steps(steps or settings.rollout.rollout_steps),
        interval_s=interval_s or settings.rollout.rollout_interval_seconds,
        thresholds=Thresholds(min_agreement=settings.rollout.rollout_min_agreement,
                              max_distance_shift=settings.rollout.rollout_max_distance_shift))


def sync_stable(settings: Settings, backend=None) -> dict | None:
    """After a promotion or rollback by hand: serve the registry's champion as the stable
    version and drop any canary. None when no backend is configured."""

    backend = backend or backend_for(settings)
    if backend is None:
        return None
    champion = registry.alias_version(settings, "champion")
    if champion is None:
        raise RolloutError(f"model {settings.model_name!r} has no champion to serve")
    routing = backend.routing()
    if routing["canary"]:
        backend.drop(routing["canary"])
    if routing["stable"] != str(champion.version):
        backend.load(str(champion.version), slot="stable")
    return backend.routing()
