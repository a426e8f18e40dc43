"""What every rollout shares: the steps, the analysis of one window, the backend protocol.

A backend is where traffic moves: the inference server's admin API (:mod:`.backends.local`) or a
KServe InferenceService (:mod:`.backends.kubernetes`). The controller (:mod:`.controller`) drives
either through :class:`Backend`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class RolloutError(RuntimeError):
    """The rollout cannot start or continue (with the reason)."""


@dataclass(frozen=True)
class Step:
    mode: str  # "shadow" or "canary"
    weight: float  # percent of keys the canary answers (canary mode)

    @classmethod
    def parse(cls, text: str) -> Step:
        """``shadow`` or a percentage like ``10`` / ``10%``."""
        text = text.strip().rstrip("%")
        if text == "shadow":
            return cls("shadow", 0.0)
        try:
            weight = float(text)
        except ValueError:
            raise ValueError(f"rollout step {text!r} should be 'shadow' or a percentage") from None
        if not 0 < weight <= 100:
            raise ValueError(f"rollout step {weight}% should be in (0, 100]")
        return cls("canary", weight)

    def __str__(self) -> str:
        return "shadow" if self.mode == "shadow" else f"{self.weight:g}%"


def parse_steps(text: str) -> list[Step]:
    steps = [Step.parse(part) for part in text.split(",") if part.strip()]
    if not steps:
        raise ValueError("a rollout needs at least one step")
    weights = [s.weight for s in steps if s.mode == "canary"]
    if weights != sorted(weights):
        raise ValueError(f"rollout steps {text!r} should raise the weight step by step")
    return steps


@dataclass(frozen=True)
class Thresholds:
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 3.0
    p99_floor_ms: float = 25.0
    min_agreement: float = 0.80
    max_distance_shift: float = 0.25  # |canary median / stable median - 1| on the same rows
    min_rows: int = 50  # compared rows needed to judge a step


def analyse(window: dict, stable: str, canary: str, t: Thresholds) -> dict:
    """The verdict of one window: ``{"verdict": "pass"|"fail"|"wait", "checks": {...}}``.

    Agreement and the same-rows distance need both models on the same rows (one server with
    both slots); where the canary runs apart (KServe revisions) agreement is skipped and the
    distance shift compares the two versions' own rows, which the random split makes alike.
    """
    c, s = window.get(canary), window.get(stable)
    seen = c.get("rows", 0) if c else 0
    if seen < t.min_rows:
        return {"verdict": "wait", "reason": f"{seen} rows scored by the canary, {t.min_rows} "
                                             f"needed", "checks": {}}
    assert c is not None  # seen > 0
    s = s or {"error_rate": 0.0, "latency_ms": {"p99": None}, "distance": {"p50": None}}
    checks = {}
    limit = s["error_rate"] + t.max_error_rate_increase
    checks["error_rate"] = {"canary": c["error_rate"], "stable": s["error_rate"], "max": limit,
                            "ok": c["error_rate"] <= limit}
    c99, s99 = c["latency_ms"]["p99"], s["latency_ms"]["p99"]
    if c99 is not None:
        limit = max(t.p99_floor_ms, (s99 or 0) * t.max_p99_ratio)
        checks["p99_latency_ms"] = {"canary": c99, "stable": s99, "max": limit,
                                    "ok": c99 <= limit}
    if c.get("agreement") is not None:
        checks["agreement"] = {"canary": round(c["agreement"], 4), "min": t.min_agreement,
                               "ok": c["agreement"] >= t.min_agreement}
    mine = c["distance"]["p50"]
    ref = (c.get("stable_distance_on_same_rows") or {}).get("p50") or s["distance"]["p50"]
    if mine is None:
        # The canary scored rows but reported no distance to judge: that is not a pass.
        checks["distance_shift"] = {"canary_p50": None, "stable_p50": ref, "shift": None,
                                    "max": t.max_distance_shift, "ok": False}
    elif ref:
        shift = abs(mine / ref - 1)
        checks["distance_shift"] = {"canary_p50": mine, "stable_p50": ref,
                                    "shift": round(shift, 4), "max": t.max_distance_shift,
                                    "ok": shift <= t.max_distance_shift}
    failed = [name for name, check in checks.items() if not check["ok"]]
    return {"verdict": "fail" if failed else "pass", "failed": failed, "checks": checks,
            "reason": "; ".join(_explain(name, checks[name]) for name in failed)}


def _explain(name: str, check: dict) -> str:
    if name == "distance_shift" and check["canary_p50"] is None:
        return ("distance shift not measurable: the canary scored rows but reported no finite "
                "distance")
    if name == "distance_shift":
        return (f"distance shift {check['shift']} > {check['max']} (median distance "
                f"{check['canary_p50']} against the stable's {check['stable_p50']})")
    bound = "min" if "min" in check else "max"
    return f"{name} {check['canary']} {'<' if bound == 'min' else '>'} {bound} {check[bound]}"


class Backend(Protocol):
    """Where the rollout controller moves traffic. Each call returns what the backend reports;
    a refusal raises :class:`RolloutError` with the reason."""

    def routing(self) -> dict:
        """``{"stable": version, "canary": version or None, "weight": percent, "mode": ...}``"""
        ...

    def load(self, version: str, slot: str = "canary") -> dict:
        """Load ``version`` into ``slot`` (a new canary starts at weight 0)."""
        ...

    def traffic(self, step: Step) -> dict:
        """Set the canary's mode and weight for ``step``."""
        ...

    def promote(self, version: str) -> dict:
        """The canary ``version`` becomes the stable version."""
        ...

    def drop(self, version: str) -> dict:
        """Remove the canary ``version``; all traffic to the stable version."""
        ...

    def window(self) -> dict:
        """Each version's figures since the last call (per version, as ``analyse`` reads them);
        opens a new window."""
        ...

    def live(self) -> dict:
        """The same figures as :meth:`window` of the window in progress, without opening a new
        one (what the post-promotion watch reads)."""
        ...
