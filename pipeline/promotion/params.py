"""The params of the alias moves made by hand and of the publication: one typed model per entry
point, from which the DAGs' ``Param``s (``kmeans_promote``, ``kmeans_rollback``,
``kmeans_publish``: :mod:`pipeline.orchestration.params`) and the CLI's options
(``kmeans rollback``, ``kmeans publish-segments``: ``pipeline.cli.options_from``) are derived.

Every field has a default the Airflow trigger form accepts: optional means ``None`` with a
nullable type, and a reason has a default that says the move was made by hand (the audit trail
records who as its actor: the DAG run, or the user at the shell).

Light on purpose: the DAG files import it at parse time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: A registry version, as the trigger form and the CLI take it.
VERSION_PATTERN = r"^\d+$"


def _empty_is_none(value):
    """An emptied input of the trigger form (or ``""`` in a conf) means "not given"."""
    return None if value == "" else value


class PromoteParams(BaseModel):
    """Make a version champion (``kmeans_promote``)."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, pattern=VERSION_PATTERN,
                                description="Version to make champion; empty: the pending "
                                            "challenger.")
    _version = field_validator("version", mode="before")(_empty_is_none)

    reason: str = Field("promoted by hand from Airflow", min_length=1, max_length=1000,
                        description="Why (kept in the audit trail).")
    canary: bool = Field(True, description="Roll it out through the canary steps (rolled back "
                                           "automatically when it misbehaves) where a rollout "
                                           "backend is configured; off: promote at once.")


class RollbackParams(BaseModel):
    """Move ``champion`` back to ``previous`` or a named version (``kmeans_rollback``,
    ``kmeans rollback``)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("rolled back by hand", min_length=1, max_length=1000,
                        description="Why the champion is rolled back (kept in the audit "
                                    "trail).")
    to_version: str | None = Field(None, pattern=VERSION_PATTERN,
                                   description="Version to return to; empty: the 'previous' "
                                               "alias.")
    _to_version = field_validator("to_version", mode="before")(_empty_is_none)

    drop_challenger: bool = Field(False, description="Also remove a pending challenger (kept "
                                                     "by default).")


class PublishParams(BaseModel):
    """Publish every customer's segment (``kmeans_publish``, ``kmeans publish-segments``)."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, pattern=VERSION_PATTERN,
                                description="Registry version to score with; empty: the "
                                            "champion.")

    _version = field_validator("version", mode="before")(_empty_is_none)
