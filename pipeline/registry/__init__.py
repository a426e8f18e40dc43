"""MLflow tracking and model registry: runs, models-from-code versions, aliases, audit trail.

Aliases: ``challenger`` (registered, waiting), ``champion`` (served), ``previous`` (the champion
before the last promotion, what a rollback returns to). Every move goes through
:func:`register_challenger`, :func:`promote`, :func:`rollback` or :func:`reject_challenger`,
under the model's alias lock, and is appended to the audit trail (``home/audit/aliases.jsonl``,
``kmeans audit``).

The package's parts: :mod:`.client` (MLflow pointed at the store, experiments, version
look-ups), :mod:`.signature` (the logged model's signature and input example), :mod:`.models`
(logging, registering and downloading versions), :mod:`.locks` (the alias lock),
:mod:`.aliases` (alias moves and the audit trail), :mod:`.follower` (a long-running process
following the champion). What callers use is importable from here.
"""

from pipeline.registry.aliases import (
    audit_path,
    current_aliases,
    promote,
    read_audit,
    register_challenger,
    reject_challenger,
    rollback,
)
from pipeline.registry.client import (
    alias_version,
    client,
    configure,
    model_version,
    monitoring_experiment,
    sqlite_store,
)
from pipeline.registry.follower import ChampionFollower
from pipeline.registry.locks import AliasMoveInProgress, alias_lock, lock_path
from pipeline.registry.models import download_model, log_model_version
from pipeline.registry.signature import model_signature

__all__ = [
    "AliasMoveInProgress", "ChampionFollower", "alias_lock", "alias_version", "audit_path",
    "client", "configure", "current_aliases", "download_model", "lock_path",
    "log_model_version", "model_signature", "model_version", "monitoring_experiment",
    "promote", "read_audit", "register_challenger", "reject_challenger", "rollback",
    "sqlite_store",
]
