"""Placement of blocks on executors: by cores, away from late executors for a probation that
grows, onto the survivors of a lost one; and the staging count (no Spark here: the bookkeeping
alone; tests/integration/spark/test_spark_uneven.py runs it on a real uneven cluster)."""

import pickle

import pytest

from pipeline.engine.placement import (
    PROBATION_PASSES,
    Executor,
    Placement,
    assign,
    behind_executors,
    late_executors,
    loads,
)
from pipeline.engine.spark import Inbox, Outcome

ONE_A, ONE_B, TWO = Executor("a", "h1", 1), Executor("b", "h2", 1), Executor("c", "h3", 2)


def test_blocks_go_by_cores_and_rows():
    rows = dict(enumerate([14, 26, 18, 22, 20, 24, 16, 20]))
    placed = assign(rows, [ONE_A, ONE_B, TWO])
    per_core = {e.id: loads(placed, rows).get(e.id, 0) / e.cores for e in (ONE_A, ONE_B, TWO)}
    assert max(per_core.values()) - min(per_core.values()) <= max(rows.values()), per_core
    assert loads(placed, rows)["c"] == pytest.approx(sum(rows.values()) / 2, rel=0.15)
    # the same input, the same placement (ties broken by executor id, not by chance)
    assert assign(rows, [TWO, ONE_B, ONE_A]) == placed


def test_equal_blocks_split_in_proportion_to_cores():
    placed = assign({i: 1.0 for i in range(8)}, [ONE_A, ONE_B, TWO])
    assert sorted(list(placed.values()).count(e) for e in "abc") == [2, 2, 4]
    with pytest.raises(ValueError, match="no executor"):
        assign({0: 1.0}, [])


def test_late_needs_a_median_and_the_floor():
    assert late_executors({"a": 2}, {"a": 0.0}, 10.0, [], floor=2, multiplier=3) == []
    assert late_executors({"a": 2, "b": 0}, {"a": 0.0, "b": 0.0}, 2.5, [0.1],
                          floor=2, multiplier=3) == ["a"]
    # a slow block raises the limit: 3 x 1.0 s
    assert late_executors({"a": 2}, {"a": 0.0}, 2.5, [1.0], floor=2, multiplier=3) == []


def test_a_late_executor_is_on_probation_then_gets_its_blocks_back():
    place = Placement(home={0: "a", 1: "b", 2: "c", 3: "c"})
    place.mark_late("a")
    place.stand_ins({0: "c"})
    place.record({0: "c", 1: "b", 2: "c", 3: "c"}, late={"a"})
    for _ in range(PROBATION_PASSES - 1):
        assert place.targets()[0] == "c"
        place.record(place.targets())
    assert place.targets()[0] == "c"
    place.record(place.targets())
    assert place.targets()[0] == "a", "probation over: home again"
    place.record(place.targets())  # delivered in time: cleared
    assert "a" not in place.probation and place.stand_in == {}
    summary = place.summary({i: 10 for i in range(4)})
    assert summary["late_executors"] == 1 and summary["rescued"] == 1
    assert summary["moves"] == 1  # block 0 came back from c


def test_probation_doubles_for_an_executor_late_again():
    place = Placement(home={0: "a", 1: "b"})
    place.mark_late("a")
    place.stand_ins({0: "b"})
    place.record({0: "b", 1: "b"}, late={"a"})
    first = place.probation["a"][0]
    while place.targets()[0] == "b":
        place.record(place.targets())
    assert place.passes == first
    place.mark_late("a")  # still frozen when its blocks came home
    place.stand_ins({0: "b"})
    place.record({0: "b", 1: "b"}, late={"a"})
    until, strikes = place.probation["a"]
    assert strikes == 2 and until - place.passes == 2 * PROBATION_PASSES


def test_a_lost_executor_is_rehomed_by_free_cores():
    weights = {i: 1.0 for i in range(8)}
    place = Placement(home=assign(weights, [ONE_A, ONE_B, TWO]))
    lost_blocks = [i for i, e in place.home.items() if e == "a"]
    new = place.rehome({"a"}, [ONE_B, TWO], weights)
    assert sorted(new) == lost_blocks
    counts = sorted(list(place.home.values()).count(e) for e in "bc")
    assert counts == [3, 5] or counts == [2, 6], place.home  # 1 core : 2 cores, rounded
    assert place.lost == 1 and "a" not in place.home.values()


def test_stagings_count_every_token_once():
    place = Placement()
    place.tokens.update({(0, "t1"), (1, "t2"), (0, "t3")})
    place.tokens.update({(0, "t1")})  # reported again by a later task
    assert place.stagings == 3 and place.restaged == 1


def test_the_inbox_hands_outcomes_to_the_driver_and_travels_without_its_sink():
    got = []
    inbox = Inbox(got.extend)
    outcome = Outcome("p", 3, "1", True, 10, 2, 0.01, None, ((3, "t"),))
    assert inbox.addInPlace([], [outcome]) == [] and got == [outcome]
    shipped = pickle.loads(pickle.dumps(inbox))  # as the executors get it
    assert shipped.sink is None
    assert shipped.addInPlace(shipped.zero(None), [outcome]) == [outcome]


def test_a_slow_executor_is_found_after_three_passes_and_not_for_noise():
    place = Placement(home={0: "a", 1: "b", 2: "c"})
    slow = {"a": 1.2, "b": 0.4, "c": 0.45}
    assert place.observe(slow) == [] and place.observe(slow) == []  # two are not enough
    assert place.observe(slow) == ["a"]
    # three times slower, but only by a few ms: not worth a move
    tiny = {"a": 0.03, "b": 0.01, "c": 0.01}
    assert place.observe(tiny) == [] and place.observe(tiny) == []
    # with two executors, the other one is the measure
    pair = Placement(home={0: "a", 1: "b"})
    assert [pair.observe({"a": 0.3, "b": 1.0}) for _ in range(3)] == [[], [], ["b"]]
    # slow, then not: the streak starts again
    again = Placement(home={0: "a", 1: "b"})
    again.observe({"a": 0.3, "b": 1.0})
    again.observe({"a": 0.3, "b": 1.0})
    again.observe({"a": 0.3, "b": 0.35})
    assert again.observe({"a": 0.3, "b": 1.0}) == []


def test_an_executor_still_at_its_share_long_after_the_others_is_behind():
    # b and c finished at 0.5 s; a, as many rows per core, delivered nothing: behind at 1.1 s
    assert behind_executors({"a": 1, "b": 0, "c": 0}, {"b": 0.5, "c": 0.4}, 1.1) == ["a"]
    assert behind_executors({"a": 1}, {"b": 0.5, "c": 0.4}, 0.95) == []  # not 0.5 s past
    # small blocks: twice as long, but by a few ms, is not worth a move (BEHIND_MIN_S)
    assert behind_executors({"a": 1}, {"b": 0.02}, 0.1) == []
    # nor before moving a block would pay for its staging elsewhere
    assert behind_executors({"a": 1}, {"b": 0.5}, 1.1, extra_s=0.8) == []
    assert behind_executors({"a": 1}, {"b": 0.5}, 1.4, extra_s=0.8) == ["a"]
    # still delivering (its last block came 0.2 s ago): not behind yet
    assert behind_executors({"a": 1}, {"b": 0.5}, 1.2, last={"a": 1.0}) == []
    assert behind_executors({"a": 1}, {"b": 0.5}, 1.6, last={"a": 1.0}) == ["a"]
    # long blocks: twice the others' time is the measure
    assert behind_executors({"a": 1}, {"b": 2.0}, 3.0) == []
    assert behind_executors({"a": 1}, {"b": 2.0}, 4.1) == ["a"]
    # a has twice the rows per core of b (a stand-in during a probation): twice b's time
    # is its own ref
    assert behind_executors({"a": 1}, {"b": 0.5}, 1.1, share={"a": 2.0, "b": 1.0}) == []
    assert behind_executors({"a": 1}, {"b": 0.5}, 2.1, share={"a": 2.0, "b": 1.0}) == ["a"]
    # one quick 1-core executor is no measure for a 2-core one and a frozen one together
    cores = {"one": 1, "two": 2, "frozen": 1}
    assert behind_executors({"two": 2, "frozen": 2}, {"one": 0.2}, 1.0, cores=cores) == []
    assert behind_executors({"frozen": 2}, {"one": 0.2, "two": 0.3}, 1.0,
                            cores=cores) == ["frozen"]
    # an executor that has finished is never behind; nobody finished, nothing to compare
    assert behind_executors({"a": 0}, {"a": 0.5}, 9.0) == []
    assert behind_executors({"a": 1, "b": 1}, {}, 9.0) == []
