"""Aliases and their audit trail: ``challenger`` (registered, waiting), ``champion``
(served), ``previous`` (the champion before the last promotion, what a rollback returns to).

Every move goes through :func:`register_challenger`, :func:`promote`, :func:`rollback` or
:func:`reject_challenger`, under the model's alias lock (:mod:`pipeline.registry.locks`), and
is appended to the audit trail (``home/audit/aliases.jsonl``, ``kmeans audit``).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.core.io import (
    append_line,
    private_dir,
    read_json_lines,
    utc_now_iso,
)
from pipeline.core.settings import Settings
from pipeline.registry.client import alias_version, client, model_version
from pipeline.registry.locks import alias_lock

log = logging.getLogger("pipeline.registry")  # one logger for the package, as before the split


ALIASES = ("champion", "challenger", "previous")


def current_aliases(settings: Settings) -> dict[str, str | None]:
    """The version behind each alias (None where the alias is not set)."""
    return {alias: _alias_number(settings, alias) for alias in ALIASES}


# ---------------------------------------------------------------- alias moves
#
# Every alias move happens under one lock per registered model, so two promotions (or a
# promotion and a rollback) cannot interleave and leave the aliases half-moved. Promote and
# rollback take it without waiting: the loser is refused, naming who holds it. Within a move
# the order keeps every version reachable: `previous` is written before `champion` moves.



def register_challenger(settings: Settings, version: str, *, reason: str,
                        actor: str | None = None, figures: dict | None = None) -> list[str]:
    """``challenger`` <- ``version``; the model's first version also becomes ``champion``.

    Waits up to ``settings.alias_lock_wait_seconds`` for a promotion in progress. Returns the
    aliases set.
    """
    version, actor = str(version), actor or _actor()
    with alias_lock(settings, operation="registration", version=version, actor=actor,
                    wait=settings.alias_lock_wait_seconds):
        moves = [_move_alias(settings, "challenger", version, operation="registration",
                             reason=reason, actor=actor, figures=figures)]
        if _alias_number(settings, "champion") is None:
            moves.append(_move_alias(
                settings, "champion", version, operation="registration", actor=actor,
                reason="first version of the model: no champion to compare with",
                figures=figures))
    return [m["alias"] for m in moves]


def promote(settings: Settings, version: str, *, reason: str, actor: str | None = None,
            figures: dict | None = None) -> dict:
    """``previous`` <- the old champion, ``champion`` <- ``version``; ``challenger`` is removed
    if it pointed at ``version``. Refused at once if another alias move is in progress."""
    version, actor = str(version), actor or _actor()
    _require_reason(reason, "promotion")
    with alias_lock(settings, operation="promotion", version=version, actor=actor):
        model_version(settings, version)
        old = _alias_number(settings, "champion")
        if old == version:
            raise ValueError(f"version {version} is already the champion of "
                             f"{settings.model_name!r}; nothing to promote")
        common: dict[str, Any] = {"operation": "promotion", "reason": reason, "actor": actor,
                                  "figures": figures}
        moves = []
        if old is not None:
            moves.append(_move_alias(settings, "previous", old, **common))
        moves.append(_move_alias(settings, "champion", version, **common))
        if _alias_number(settings, "challenger") == version:
            moves.append(_move_alias(settings, "challenger", None, **common))
    return {"model": settings.model_name, "operation": "promotion", "champion": version,
            "previous": old, "moves": moves}


def reject_challenger(settings: Settings, version: str, *, reason: str,
                      actor: str | None = None, figures: dict | None = None) -> dict:
    """A rollout of ``version`` failed: ``challenger`` is removed if it points at ``version``,
    and the version is tagged ``rollout_rejected_at`` / ``rollout_reject_reason`` so nobody
    rolls it out again by accident. The champion is untouched."""
    version, actor = str(version), actor or _actor()
    _require_reason(reason, "rejection")
    with alias_lock(settings, operation="rejection", version=version, actor=actor,
                    wait=settings.alias_lock_wait_seconds):
        model_version(settings, version)
        moves = []
        if _alias_number(settings, "challenger") == version:
            moves.append(_move_alias(settings, "challenger", None, operation="rejection",
                                     reason=reason, actor=actor, figures=figures))
        c = client(settings)
        c.set_model_version_tag(settings.model_name, version, "rollout_rejected_at",
                                utc_now_iso())
        c.set_model_version_tag(settings.model_name, version, "rollout_reject_reason",
                                reason[:5000])
    return {"model": settings.model_name, "operation": "rejection", "version": version,
            "champion": _alias_number(settings, "champion"), "moves": moves}


def rollback(settings: Settings, *, reason: str, actor: str | None = None,
             to_version: str | None = None, figures: dict | None = None,
             drop_challenger: bool = False) -> dict:
    """``champion`` <- ``previous`` (or ``to_version``); a pending ``challenger`` is kept.

    ``previous`` is never pointed at the version rolled back from: that version is known bad
    and must not be one rollback away. So a plain rollback consumes ``previous`` (removed, its
    version is the champion now) and a second rollback is refused until a promotion sets it
    again; a rollback to an explicit ``to_version`` leaves ``previous`` as it was. The version
    rolled back from gets the tags ``rolled_back_at`` and ``rollback_reason``.

    A ``challenger`` waiting for its rollout (registered, perhaps approved by a person at a
    drift review) stays, unless ``drop_challenger`` asks for its removal, or it is the version
    rolled back from (known bad) or the one rolled back to (champion now). The result says
    which, in ``challenger`` and in one ``summary`` line.
    """
    actor = actor or _actor()
    to_version = None if to_version in (None, "") else str(to_version)
    _require_reason(reason, "rollback")
    with alias_lock(settings, operation="rollback", version=to_version, actor=actor):
        bad = _alias_number(settings, "champion")
        if bad is None:
            raise LookupError(f"model {settings.model_name!r} has no champion; nothing to roll "
                              f"back")
        previous = _alias_number(settings, "previous")
        target = to_version or previous
        if target is None:
            raise LookupError(f"model {settings.model_name!r} has no 'previous' alias to roll "
                              f"back to (champion is version {bad}); name a version with "
                              f"to_version")
        if target == bad:
            raise ValueError(f"version {target} is already the champion; nothing to roll back")
        model_version(settings, target)
        common: dict[str, Any] = {"operation": "rollback", "reason": reason, "actor": actor,
                                  "figures": figures}
        moves = [_move_alias(settings, "champion", target, **common)]
        if previous == target:
            moves.append(_move_alias(settings, "previous", None, **common))
        challenger = _alias_number(settings, "challenger")
        why = _challenger_goes(challenger, bad=bad, target=target, drop=drop_challenger)
        if challenger is not None and why:
            moves.append(_move_alias(settings, "challenger", None, **common))
        c = client(settings)
        c.set_model_version_tag(settings.model_name, bad, "rolled_back_at", moves[0]["at"])
        c.set_model_version_tag(settings.model_name, bad, "rollback_reason", reason)
    if challenger is None:
        pending = {"version": None, "kept": False, "why": "there was no challenger"}
    else:
        pending = {"version": challenger, "kept": not why,
                   "why": why or "a pending challenger is kept (drop_challenger to remove it)"}
    summary = f"champion {bad} -> {target}; " + (
        "no challenger" if challenger is None else
        f"challenger {challenger} {'kept' if pending['kept'] else 'removed'}: {pending['why']}")
    return {"model": settings.model_name, "operation": "rollback", "champion": target,
            "rolled_back_from": bad, "challenger": pending, "summary": summary, "moves": moves}


def _challenger_goes(challenger: str | None, *, bad: str, target: str, drop: bool) -> str:
    """Why a rollback removes the challenger ("" when it stays)."""
    if challenger is None:
        return ""
    if drop:
        return "removed as asked (drop_challenger)"
    if challenger == bad:
        return f"it is version {bad}, the one rolled back from"
    if challenger == target:
        return f"it is version {target}, the champion now"
    return ""


def _move_alias(settings: Settings, alias: str, version: str | None, *, operation: str,
                reason: str, actor: str, figures: dict | None) -> dict:
    """Point ``alias`` at ``version`` (None: remove it) and append the move to the audit trail.
    The caller holds the alias lock."""
    if alias not in ALIASES:
        raise ValueError(f"alias={alias!r} should be one of {ALIASES}")
    c = client(settings)
    before = _alias_number(settings, alias)
    if version is None:
        c.delete_registered_model_alias(settings.model_name, alias)
    else:
        c.set_registered_model_alias(settings.model_name, alias, str(version))
    entry = {
        "at": utc_now_iso(), "model": settings.model_name, "alias": alias,
        "operation": operation, "from_version": before,
        "to_version": None if version is None else str(version),
        "actor": actor, "reason": reason, "figures": figures or {},
    }
    # Owner-only: the trail names who moved which model and why, with the gates' figures.
    private_dir(audit_path(settings).parent)
    append_line(audit_path(settings), json.dumps(entry, sort_keys=True, default=str))
    log.info("alias %s: %s -> %s (%s: %s)", alias, before, entry["to_version"], operation, reason)
    return entry


def _alias_number(settings: Settings, alias: str) -> str | None:
    found = alias_version(settings, alias)
    return None if found is None else str(found.version)


def _require_reason(reason: str, operation: str) -> None:
    if not (reason or "").strip():
        raise ValueError(f"a {operation} needs a reason (it goes to the audit trail)")



def audit_path(settings: Settings) -> Path:
    return settings.home / "audit" / "aliases.jsonl"


def read_audit(settings: Settings) -> list[dict]:
    return read_json_lines(audit_path(settings))



def _actor() -> str:
    return os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or getpass.getuser()

