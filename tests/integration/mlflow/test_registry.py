"""Alias semantics (registration, promote, rollback), the audit trail and the alias lock, on a
real MLflow SQLite store; the CLI commands on top of them."""

import json
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app
from pipeline.registry import aliases as registry_aliases
from tests.helpers.net import free_port


@pytest.fixture
def versions(settings):
    """Three registered versions of the model (no aliases yet)."""
    c = registry.client(settings)
    experiment = registry.configure(settings)
    c.create_registered_model(settings.model_name)
    out = []
    for _ in range(3):
        run = c.create_run(experiment)
        out.append(str(c.create_model_version(settings.model_name, source=run.info.artifact_uri,
                                              run_id=run.info.run_id).version))
    return out


def _aliases(settings):
    return registry.current_aliases(settings)


def _live(settings, *versions):
    """v1 registered first (champion too), the rest as challengers."""
    for v in versions:
        registry.register_challenger(settings, v, reason="registered", actor="run-" + v)


def test_first_registration_is_champion_too_later_ones_wait(settings, versions):
    v1, v2, _ = versions
    assert registry.register_challenger(settings, v1, reason="r", actor="a") == [
        "challenger", "champion"]
    assert registry.register_challenger(settings, v2, reason="r", actor="a") == ["challenger"]
    assert _aliases(settings) == {"champion": v1, "challenger": v2, "previous": None}


def test_promote_keeps_the_old_champion_as_previous_and_drops_the_challenger(settings, versions):
    v1, v2, _ = versions
    _live(settings, v1, v2)
    out = registry.promote(settings, v2, reason="canary passed", actor="rollout",
                           figures={"agreement": 0.97})
    assert out["champion"] == v2 and out["previous"] == v1
    assert _aliases(settings) == {"champion": v2, "previous": v1, "challenger": None}
    moves = [(e["alias"], e["from_version"], e["to_version"])
             for e in registry.read_audit(settings) if e["operation"] == "promotion"]
    assert moves == [("previous", None, v1), ("champion", v1, v2), ("challenger", v2, None)]
    entry = registry.read_audit(settings)[-1]
    assert entry["actor"] == "rollout" and entry["reason"] == "canary passed"
    assert entry["figures"] == {"agreement": 0.97} and entry["at"]


def test_rollback_returns_to_previous_clears_it_and_tags_the_bad_version(settings, versions):
    v1, v2, v3 = versions
    _live(settings, v1, v2)
    registry.promote(settings, v2, reason="canary passed", actor="rollout")
    registry.register_challenger(settings, v3, reason="registered", actor="run-3")
    out = registry.rollback(settings, reason="silhouette fell", actor="monitor")
    assert out["champion"] == v1 and out["rolled_back_from"] == v2
    # The pending challenger (v3, waiting for its rollout) is kept, and the result says so.
    assert _aliases(settings) == {"champion": v1, "previous": None, "challenger": v3}
    assert out["challenger"] == {"version": v3, "kept": True, "why": (
        "a pending challenger is kept (drop_challenger to remove it)")}
    assert out["summary"] == f"champion {v2} -> {v1}; challenger {v3} kept: " + out[
        "challenger"]["why"]
    tags = registry.model_version(settings, v2).tags
    assert tags["rollback_reason"] == "silhouette fell" and tags["rolled_back_at"]
    moves = [(e["alias"], e["from_version"], e["to_version"])
             for e in registry.read_audit(settings) if e["operation"] == "rollback"]
    assert moves == [("champion", v2, v1), ("previous", v1, None)]

    # The bad version is never one rollback away: a second rollback needs a named version.
    with pytest.raises(LookupError, match="no 'previous' alias to roll back to"):
        registry.rollback(settings, reason="again", actor="monitor")
    # Back to the challenger itself: it is the champion now, so the alias goes.
    out = registry.rollback(settings, reason="back to 3", to_version=v3, actor="ops")
    assert _aliases(settings) == {"champion": v3, "previous": None, "challenger": None}
    assert out["challenger"] == {"version": v3, "kept": False,
                                 "why": f"it is version {v3}, the champion now"}


def test_rollback_drops_the_challenger_only_when_asked(settings, versions):
    v1, v2, v3 = versions
    _live(settings, v1, v2)
    registry.promote(settings, v2, reason="canary passed", actor="rollout")
    registry.register_challenger(settings, v3, reason="registered", actor="run-3")
    out = registry.rollback(settings, reason="bad week", actor="ops", drop_challenger=True)
    assert _aliases(settings) == {"champion": v1, "previous": None, "challenger": None}
    assert out["summary"] == (f"champion {v2} -> {v1}; challenger {v3} removed: removed as "
                              "asked (drop_challenger)")
    assert [(e["alias"], e["to_version"]) for e in registry.read_audit(settings)][-1] == (
        "challenger", None)


def test_rejected_challenger_leaves_champion_and_previous_alone(settings, versions):
    v1, v2, v3 = versions
    _live(settings, v1, v2)
    registry.promote(settings, v2, reason="canary passed", actor="rollout")
    registry.register_challenger(settings, v3, reason="registered", actor="run-3")
    out = registry.reject_challenger(settings, v3, reason="step 10% failed: agreement 0.41",
                                     actor="rollout", figures={"agreement": 0.41})
    assert out["champion"] == v2
    assert _aliases(settings) == {"champion": v2, "previous": v1, "challenger": None}
    assert registry.model_version(settings, v3).tags["rollout_reject_reason"] == (
        "step 10% failed: agreement 0.41")
    entry = registry.read_audit(settings)[-1]
    assert (entry["operation"], entry["alias"], entry["from_version"], entry["to_version"]) == (
        "rejection", "challenger", v3, None)


@pytest.mark.parametrize("call, error, message", [
    (lambda s: registry.promote(s, "99", reason="r"), LookupError, "has no version '99'"),
    (lambda s: registry.promote(s, "1", reason="r"), ValueError, "1 is already the champion"),
    (lambda s: registry.promote(s, "2", reason="  "), ValueError, "promotion needs a reason"),
    (lambda s: registry.rollback(s, reason="r", to_version="1"), ValueError,
     "already the champion; nothing to roll back"),
])
def test_refused_moves_change_nothing(settings, versions, call, error, message):
    _live(settings, versions[0])
    before, audit = _aliases(settings), registry.read_audit(settings)
    with pytest.raises(error, match=message):
        call(settings)
    assert _aliases(settings) == before and registry.read_audit(settings) == audit


def test_two_promotions_at_once_one_wins_the_other_is_refused(settings, versions, monkeypatch):
    v1, v2, v3 = versions
    _live(settings, v1)
    # Widen the window between the winner's alias moves so the two really overlap.
    real_move = registry_aliases._move_alias

    def slow_move(*args, **kwargs):
        time.sleep(0.5)
        return real_move(*args, **kwargs)

    monkeypatch.setattr(registry_aliases, "_move_alias", slow_move)
    start, results = threading.Barrier(2), {}

    def promote(version):
        start.wait()
        try:
            results[version] = registry.promote(settings, version, reason="race",
                                                actor=f"engineer-{version}")
        except registry.AliasMoveInProgress as err:
            results[version] = err

    threads = [threading.Thread(target=promote, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [v for v, r in results.items() if isinstance(r, Exception)]
    assert len(refused) == 1, results
    loser = refused[0]
    winner = v3 if loser == v2 else v2
    assert str(results[loser]).startswith(
        f"promotion of version {loser} refused: a promotion of version {winner} by "
        f"engineer-{winner} is in progress since ")
    # The first version is still challenger too: only a challenger that was promoted is dropped.
    assert _aliases(settings) == {"champion": winner, "previous": v1, "challenger": v1}
    promoted = {e["to_version"] for e in registry.read_audit(settings)
                if e["operation"] == "promotion"}
    assert promoted == {winner, v1}, "only the winner's moves are in the audit trail"


def test_lock_held_by_another_process_refuses_promote_and_rollback(settings, versions):
    _live(settings, *versions[:2])
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pipeline import registry\n"
         "from pipeline.core.settings import load_settings\n"
         "with registry.alias_lock(load_settings(), operation='rollback', version=None, "
         "actor='alice'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _aliases(settings)
        with pytest.raises(registry.AliasMoveInProgress,
                           match=r"^promotion of version 2 refused: a rollback by alice is in "
                                 r"progress since \d{4}-"):
            registry.promote(settings, "2", reason="r", actor="bob")
        with pytest.raises(registry.AliasMoveInProgress, match="rollback to version 1 refused"):
            registry.rollback(settings, reason="r", to_version="1", actor="bob")
        assert _aliases(settings) == before
    finally:
        holder.communicate("")
    registry.promote(settings, "2", reason="after the holder finished", actor="bob")
    assert _aliases(settings)["champion"] == "2"


def test_registration_waits_for_a_promotion_in_progress(settings, versions):
    _live(settings, versions[0])
    settings.alias_lock_wait_seconds = 5.0
    released = threading.Event()

    def hold():
        with registry.alias_lock(settings, operation="promotion", version="1", actor="x"):
            time.sleep(0.7)
        released.set()

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.1)
    assert registry.register_challenger(settings, versions[1], reason="r", actor="run") == [
        "challenger"]
    assert released.is_set(), "registration ran only after the promotion released the lock"
    t.join()


def test_postgres_store_uses_an_advisory_lock(tmp_path):
    """Against the machine's PostgreSQL (127.0.0.1:5432, trust auth; .ci/run starts it)."""
    from pipeline.core.settings import load_settings

    settings = load_settings(home=tmp_path,
                             mlflow_tracking_uri="postgresql://postgres@127.0.0.1:5432/postgres")
    with registry.alias_lock(settings, operation="promotion", version="3", actor="carol"):
        with pytest.raises(registry.AliasMoveInProgress,
                           match="promotion of version 4 refused: a promotion of version 3 "
                                 "by carol is in progress since"):
            with registry.alias_lock(settings, operation="promotion", version="4",
                                     actor="dave"):
                pass
    with registry.alias_lock(settings, operation="promotion", version="4", actor="dave"):
        pass  # released: the next one gets it


# ---------------------------------------------------------------- CLI

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, list(args))


def test_cli_promote_rollback_and_audit(settings, versions, monkeypatch):
    _live(settings, *versions[:2])
    monkeypatch.setenv("KMEANS_AIRFLOW_PORT", str(free_port()))  # no Airflow listens there
    monkeypatch.delenv("AIRFLOW__API__PORT", raising=False)
    promoted = _cli("promote", "2", "--reason", "canary passed", "--actor", "erin")
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["champion"] == "2"
    # No Airflow of this deployment answers here: the move stands, and the answer says how
    # the segments get republished (tests/integration/airflow/test_airflow_scheduler.py
    # shows the event reaching a real Airflow).
    publication = json.loads(promoted.stdout)["publication"]
    assert not publication["emitted"] and "trigger kmeans_publish" in publication["reason"]
    entry = registry.read_audit(settings)[-2]
    assert entry["figures"] == {"gates": "not run"}, "a version without gates says so"
    rolled = _cli("rollback", "--reason", "latency regression")
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout)["champion"] == "1"
    audit = json.loads(_cli("audit").stdout)
    assert [(e["operation"], e["alias"]) for e in audit] == [
        ("registration", "challenger"), ("registration", "champion"),
        ("registration", "challenger"), ("promotion", "previous"), ("promotion", "champion"),
        ("promotion", "challenger"), ("rollback", "champion"), ("rollback", "previous")]
    assert audit[-1]["reason"] == "latency regression"


@pytest.mark.parametrize("args, message", [
    (["promote", "7", "--reason", "x"], "error: model 'customer_segments' has no version '7'"),
    (["rollback", "--reason", "x"], "error: model 'customer_segments' has no 'previous' alias"),
    (["promote", "2"], "Missing option '--reason'"),
])
def test_cli_refusals_are_one_line(settings, versions, args, message):
    _live(settings, *versions[:2])
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_cli_promote_while_locked_names_the_holder(settings, versions):
    _live(settings, *versions[:2])
    with registry.alias_lock(settings, operation="promotion", version="1", actor="frank"):
        result = _cli("promote", "2", "--reason", "x")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: promotion of version 2 refused: a promotion of "
                                    "version 1 by frank is in progress since ")
