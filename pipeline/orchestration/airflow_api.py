"""Tell Airflow that the champion moved, from outside a DAG (``kmeans promote``/``rollback``).

The champion asset (:data:`pipeline.orchestration.dag_defaults.CHAMPION_ASSET`) schedules
``kmeans_publish``; the DAGs that move the champion emit it themselves. A move from the CLI
creates the same asset event through Airflow's REST API (``POST /api/v2/assets/events``), as
the admin user of this deployment's Airflow (the simple auth manager's password file, kept
owner-only in its AIRFLOW_HOME), so the published segments follow it too. When no Airflow
answers, the move stands and the answer says how to republish by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from pipeline.core.settings import Settings
from pipeline.orchestration.dag_defaults import CHAMPION_ASSET

#: The simple auth manager's user the project's Airflow deployments create.
ADMIN_USER = "admin"
#: Seconds for each call to Airflow's API.
TIMEOUT = 15.0


def password_files(settings: Settings) -> list[Path]:
    """Where this deployment's Airflow keeps the admin password, most specific first: the
    configured file, then the AIRFLOW_HOME of ``make airflow-ui`` and of ``make prod-up``."""
    homes = [Path(os.environ["AIRFLOW_HOME"])] if os.environ.get("AIRFLOW_HOME") else []
    homes += [settings.home / "prod" / "airflow", settings.home / "airflow"]
    found = [Path(p) for p in [os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")]
             if p]
    for home in homes:
        found += [home / "passwords.json", home / "simple_auth_manager_passwords.json.generated"]
    return found


def _password(settings: Settings) -> str | None:
    for path in password_files(settings):
        try:
            return str(json.loads(path.read_text())[ADMIN_USER])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def emit_champion_moved(settings: Settings, extra: dict) -> dict:
    """Create a champion asset event (``extra`` in it) on this deployment's Airflow; say what
    happened: ``{"emitted": True, "event_id": ...}`` or ``{"emitted": False, "reason": ...}``."""
    url = settings.airflow_url
    by_hand = "trigger kmeans_publish (or run `kmeans publish-segments`) to republish"
    password = _password(settings)
    if password is None:
        return {"emitted": False, "airflow": url,
                "reason": f"no Airflow admin password found (looked in "
                          f"{', '.join(str(p) for p in password_files(settings))}): {by_hand}"}
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT, trust_env=False) as http:
            reply = http.post("/auth/token", json={"username": ADMIN_USER,
                                                   "password": password})
            reply.raise_for_status()
            http.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
            assets = http.get("/api/v2/assets", params={"uri_pattern": CHAMPION_ASSET["uri"]})
            assets.raise_for_status()
            ids = [a["id"] for a in assets.json()["assets"] if a["uri"] == CHAMPION_ASSET["uri"]]
            if not ids:
                return {"emitted": False, "airflow": url,
                        "reason": f"Airflow at {url} has no asset {CHAMPION_ASSET['uri']} (its "
                                  f"DAGs are not parsed yet): {by_hand}"}
            event = http.post("/api/v2/assets/events", json={"asset_id": ids[0],
                                                              "extra": extra})
            event.raise_for_status()
    except (httpx.HTTPError, KeyError, ValueError) as err:
        return {"emitted": False, "airflow": url,
                "reason": f"Airflow at {url} did not take the event "
                          f"({type(err).__name__}: {str(err)[:200]}): {by_hand}"}
    return {"emitted": True, "airflow": url, "event_id": event.json().get("id")}
