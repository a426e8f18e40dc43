"""Where each staged block's tasks run: blocks spread over the executors by cores, moved when
an executor is lost or falls behind, and the figures a run reports.

Pure bookkeeping, no Spark: :mod:`pipeline.engine.spark` asks it which executor a block's task
should prefer (Spark's executor-level locality, ``executor_<host>_<id>``), which executors are
late in a pass, and where their blocks go instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Executor:
    """A Spark executor as the driver's status store lists it."""

    id: str
    host: str
    cores: int

    @property
    def location(self) -> str:
        """Spark's preferred-location string for a task that should run on this executor."""
        return f"executor_{self.host}_{self.id}"


def assign(weights: Mapping[int, float], executors: Iterable[Executor],
           loads: Mapping[str, float] | None = None) -> dict[int, str]:
    """Blocks to executors by cores: the heaviest block first, each to the executor whose
    load per core would be smallest with it (longest-processing-time first), so that an
    executor with twice the cores gets about twice the rows and every executor's share of a
    pass ends at about the same time. ``loads`` are rows already on each executor (a
    survivor's own blocks, when a lost executor's are spread).

    Examples
    --------
    >>> one, two = Executor("0", "h0", 1), Executor("1", "h1", 2)
    >>> placed = assign({i: 1.0 for i in range(6)}, [one, two])
    >>> sorted(list(placed.values()).count(e) for e in "01")
    [2, 4]
    """
    pool = sorted(executors, key=lambda e: e.id)
    if not pool:
        raise ValueError("no executor to place blocks on")
    load = {e.id: float((loads or {}).get(e.id, 0.0)) for e in pool}
    out: dict[int, str] = {}
    for index in sorted(weights, key=lambda i: (-weights[i], i)):
        w = max(float(weights[index]), 1e-9)
        best = min(pool, key=lambda e: ((load[e.id] + w) / max(e.cores, 1), e.id))
        load[best.id] += w
        out[index] = best.id
    return out


def loads(assignment: Mapping[int, str], weights: Mapping[int, float]) -> dict[str, float]:
    """Rows (or weights) per executor under ``assignment``."""
    out: dict[str, float] = {}
    for index, executor in assignment.items():
        out[executor] = out.get(executor, 0.0) + float(weights.get(index, 1.0))
    return out


def late_executors(pending: Mapping[str, int], last_progress: Mapping[str, float], now: float,
                   task_seconds: list[float], *, floor: float, multiplier: float) -> list[str]:
    """Executors with blocks still to deliver in a pass that have delivered nothing for
    longer than ``max(floor, multiplier x the median task time so far)``.

    Nothing is late before the first block of the pass is in: the median is what a block
    costs here, and without it a slow start (Python workers starting) is not a straggler.

    Examples
    --------
    >>> late_executors({"a": 1, "b": 0}, {"a": 0.0, "b": 0.0}, 5.0, [0.2, 0.3],
    ...                floor=2.0, multiplier=3.0)
    ['a']
    >>> late_executors({"a": 1}, {"a": 0.0}, 1.0, [0.2], floor=2.0, multiplier=3.0)
    []
    """
    if not task_seconds:
        return []
    limit = max(floor, multiplier * float(np.median(task_seconds)))
    return sorted(e for e, n in pending.items()
                  if n > 0 and now - last_progress.get(e, now) > limit)


#: A late executor's blocks stay with the executors that recomputed them for this many passes
#: after its first late pass, twice as many after a second one, and so on; then they go home
#: (the executor still holds them staged), and a pass delivered in time ends its probation.
#: A long-frozen executor so costs one late limit per probation, a brief hiccup a few passes
#: of a less even spread.
PROBATION_PASSES = 3

#: A slowed executor (a throttled container, a noisy neighbour) still delivers, so it is
#: never late; it is put on probation like a late one when, in SLOW_PASSES passes in a row,
#: it finished its share of a pass at over 1/SLOW_RATIO times the others' median time, and
#: by more than SLOW_MIN_GAIN_S (a few ms are not worth a move).
SLOW_RATIO = 0.5
SLOW_PASSES = 3
SLOW_MIN_GAIN_S = 0.25


#: The in-pass rule acts on one pass, so it wants a wider margin than the rule over passes:
#: an executor is behind only when it has delivered nothing for at least this long.
BEHIND_MIN_S = 0.25


def behind_executors(pending: Mapping[str, int], finished: Mapping[str, float],
                     elapsed: float, *, last: Mapping[str, float] | None = None,
                     extra_s: float = 0.0, share: Mapping[str, float] | None = None,
                     cores: Mapping[str, int] | None = None) -> list[str]:
    """Executors still working on their share of a pass long after the others finished
    theirs. Blocks are placed by cores, so every share should end at about ``ref``, when the
    last executor that has finished did (scaled by ``share``, rows per core of each
    executor in this pass, when the spread is uneven: stand-ins during a probation). One is
    behind when, ``elapsed`` seconds into the pass:

    - the pass has run twice as long as ``ref`` (:data:`SLOW_RATIO`);
    - and it has delivered nothing for ``max(BEHIND_MIN_S, extra_s)`` (``last``: seconds
      from the pass's start to its latest block; ``extra_s``: what moving a block costs,
      staging it elsewhere), nor since ``ref``;
    - and the executors that finished hold at least as many ``cores`` as those behind: a
      majority is the measure, never one quick executor against the rest.

    Its missing blocks are then worth recomputing on the idle ones. This catches, within
    the pass, a slowed executor that still delivers now and then (so it is never
    :func:`late_executors`) and would otherwise cost :data:`SLOW_PASSES` passes before
    :meth:`Placement.observe` finds it, and a frozen one before its late limit.

    Examples
    --------
    >>> behind_executors({"a": 1, "b": 0}, {"b": 0.6}, 1.3)
    ['a']
    >>> behind_executors({"a": 1, "b": 0}, {"b": 0.6}, 1.05)  # not twice 0.6 yet
    []
    >>> behind_executors({"a": 1}, {}, 9.0)  # nobody finished: nothing to compare with
    []
    >>> behind_executors({"a": 1}, {"b": 0.6}, 1.3, share={"a": 3.0, "b": 1.0})  # a has 3x
    []
    """
    if not finished:
        return []
    gain = max(BEHIND_MIN_S, extra_s)
    out = []
    for executor, n in sorted(pending.items()):
        if n <= 0 or executor in finished:
            continue
        ref = max(t * _ratio(share, executor, other) for other, t in finished.items())
        since = elapsed - max((last or {}).get(executor, 0.0), ref)
        if elapsed > ref / SLOW_RATIO and since > gain:
            out.append(executor)
    held = sum((cores or {}).get(e, 1) for e in finished)
    if sum((cores or {}).get(e, 1) for e in out) > held:
        return []
    return out


def _ratio(share: Mapping[str, float] | None, executor: str, other: str) -> float:
    """How much longer ``executor``'s share of a pass should take than ``other``'s."""
    if not share or share.get(other, 0.0) <= 0.0:
        return 1.0
    return max(share.get(executor, 0.0) / share[other], 1.0)


@dataclass
class Placement:
    """Where the blocks are, what moved and what was staged: the figures a run reports.

    ``home`` is each block's executor by cores (:func:`assign`); it changes only when its
    executor is lost. While an executor is on probation (it was late), its blocks run where
    they were recomputed (``stand_in``). ``stagings`` counts every block staged under this
    source, on every executor, including by attempts whose result Spark dropped (a
    speculative copy that lost, a straggler whose block was recomputed elsewhere): each
    staging leaves a token in its stage dir's log, which later tasks there report.
    """

    home: dict[int, str] = field(default_factory=dict)
    stand_in: dict[int, str] = field(default_factory=dict)
    probation: dict[str, tuple[int, int]] = field(default_factory=dict)  # ex -> (until, strikes)
    executor: dict[int, str] = field(default_factory=dict)  # block -> executor of last result
    tokens: set[tuple[int, str]] = field(default_factory=set)  # (block, staging token)
    moves: int = 0  # results from another executor than the block's previous result
    rescued: int = 0  # blocks recomputed elsewhere: late or lost executor
    lost: int = 0  # executors lost during passes
    late: int = 0  # times an executor was found late in a pass
    slow: int = 0  # times an executor was found slow over passes
    streak: dict[str, int] = field(default_factory=dict)  # ex -> slow passes in a row
    strikes: dict[str, int] = field(default_factory=dict)  # ex -> probations so far
    history: list[dict[int, str]] = field(default_factory=list)  # per pass: block -> executor

    @property
    def passes(self) -> int:
        return len(self.history)

    def targets(self) -> dict[int, str]:
        """Where each block's task of the next pass should run: home, or its stand-in while
        home is on probation."""
        out = {}
        for index, home in self.home.items():
            until = self.probation.get(home, (0, 0))[0]
            out[index] = self.stand_in.get(index, home) if self.passes < until else home
        return out

    def mark_late(self, executor: str) -> None:
        """``executor`` was late (or slow) in the current pass: on probation, twice as long
        as its previous one (for the source's life: an executor that keeps relapsing costs
        less and less often)."""
        strikes = self.strikes[executor] = self.strikes.get(executor, 0) + 1
        self.probation[executor] = (self.passes + 1 + PROBATION_PASSES * 2 ** (strikes - 1),
                                    strikes)
        self.late += 1

    def observe(self, finish: Mapping[str, float]) -> list[str]:
        """One pass's finishing times, seconds from its start to each executor's last block
        on the driver: the executors found slow (see :data:`SLOW_RATIO`) that are not on
        probation yet. Blocks are placed by cores, so every executor should finish about
        together; one that takes over twice as long as the median of the others, by more
        than :data:`SLOW_MIN_GAIN_S`, in :data:`SLOW_PASSES` passes in a row, is slow."""
        if len(finish) < 2:
            return []
        found = []
        for executor, seconds in sorted(finish.items()):
            others = float(np.median([t for e, t in finish.items() if e != executor]))
            if seconds > others / SLOW_RATIO and seconds - others > SLOW_MIN_GAIN_S:
                self.streak[executor] = self.streak.get(executor, 0) + 1
                if self.streak[executor] >= SLOW_PASSES and executor not in self.probation:
                    found.append(executor)
                    self.streak[executor] = 0
            else:
                self.streak[executor] = 0
        return found

    def stand_ins(self, blocks: Mapping[int, str]) -> None:
        """A late executor's blocks, recomputed on others: they run there while it is on
        probation."""
        self.rescued += len(blocks)
        self.stand_in.update(blocks)

    def rehome(self, lost: Iterable[str], executors: Iterable[Executor],
               weights: Mapping[int, float]) -> dict[int, str]:
        """Lost executors: their blocks get new homes on ``executors`` (the survivors),
        spread by free cores; returns them."""
        lost = set(lost)
        self.lost += len(lost)
        self.stand_in = {i: e for i, e in self.stand_in.items() if e not in lost}
        for executor in lost:
            self.probation.pop(executor, None)
        orphans = {i: weights.get(i, 1.0) for i, e in self.home.items() if e in lost}
        if not orphans:
            return {}
        kept = {i: e for i, e in self.home.items() if e not in lost}
        new = assign(orphans, executors, loads(kept, weights))
        self.home.update(new)
        return new

    def record(self, executors: Mapping[int, str], late: Iterable[str] = ()) -> None:
        """One pass's result: the executor each block's result came from. An executor on
        probation that delivered its blocks in time is cleared."""
        late = set(late)
        for index, executor in executors.items():
            previous = self.executor.get(index)
            if previous is not None and previous != executor:
                self.moves += 1
            self.executor[index] = executor
        self.history.append(dict(executors))
        for executor in [e for e, (until, _) in self.probation.items()
                         if self.passes > until and e not in late]:
            if executor in executors.values():
                del self.probation[executor]
                self.stand_in = {i: e for i, e in self.stand_in.items()
                                 if self.home[i] != executor}

    @property
    def stagings(self) -> int:
        return len(self.tokens)

    @property
    def restaged(self) -> int:
        """Stagings beyond the first of each block."""
        return len(self.tokens) - len({index for index, _ in self.tokens})

    def summary(self, rows_per_part: Mapping[int, int]) -> dict:
        rows = np.asarray(list(rows_per_part.values()), dtype=np.float64)
        per_executor: dict[str, int] = {}
        for ex in self.executor.values():
            per_executor[ex] = per_executor.get(ex, 0) + 1
        return {"blocks": len(rows_per_part), "executors": len(per_executor),
                "blocks_per_executor": sorted(per_executor.values(), reverse=True),
                "placement": {ex: n for ex, n in sorted(per_executor.items())},
                "stagings": self.stagings, "restaged": self.restaged, "moves": self.moves,
                "rescued": self.rescued, "lost_executors": self.lost,
                "late_executors": self.late, "slow_executors": self.slow,
                "on_probation": sorted(self.probation),
                "block_imbalance": float(rows.max() / rows.mean()) if rows.sum() else 1.0}
