"""The admin API the rollout controller drives: state, load, traffic, promote, drop, window.

Its handlers change what the :class:`~pipeline.serving.model.SegmentService` routes to; the
:class:`~pipeline.serving.asgi.AsgiCore` has already checked the admin token and taken a slot
of the admin budget (a flood of predictions cannot refuse a rollback).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from pipeline.model.artifact import ArtifactError
from pipeline.serving.asgi import AsgiCore, json_reply
from pipeline.serving.codec import json_object, opt_str
from pipeline.serving.dataplane import loaded_versions
from pipeline.serving.errors import Conflict, InvalidInput, ModelNotFound, Unprocessable, brief
from pipeline.serving.model import MODES

log = logging.getLogger("pipeline.serving")

#: Aliases and versions the admin API loads: MLflow's alias characters, a positive version.
ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
VERSION = re.compile(r"[1-9][0-9]{0,17}")

# loader(version=None, alias=None) -> (SegmentModel, version); blocking (MLflow download)
Loader = Callable[..., tuple]


class AdminApi:
    """The admin handlers of ``core``'s service; ``loader`` fetches a version from the
    registry (None: loading answers 409)."""

    def __init__(self, core: AsgiCore, loader: Loader | None = None):
        self.core = core
        self.service = core.service
        self.metrics = core.metrics
        self.loader = loader
        self._load_lock = asyncio.Lock()

    async def admin_state(self, request):
        s, c = self.service, self.core
        return json_reply({"routing": s.routing.describe(), "loaded": loaded_versions(s),
                           "inflight": c.inflight, "max_concurrency": c.max_concurrency,
                           "admin_inflight": c.admin_inflight,
                           "max_admin_concurrency": c.max_admin_concurrency,
                           "queued": None if c.queue_budget is None else c.queue_budget.queued,
                           "max_queued": c.max_queued,
                           "window": {v: w.summary() for v, w in s.stats.windows.items()}})

    async def admin_load(self, request):
        body = json_object(request.body, "load",
                           "{'version': '3'} or {'alias': 'challenger'}, "
                           "optional 'slot': 'canary' (default) or 'stable'")
        unknown = sorted(set(body) - {"version", "alias", "slot"})
        if unknown:
            raise InvalidInput(f"the load body has unknown keys {brief(unknown)}; allowed: "
                               "'version' or 'alias', and 'slot'")
        version, alias = body.get("version"), body.get("alias")
        if (version is None) == (alias is None):
            raise InvalidInput("send exactly one of 'version' and 'alias'")
        if version is not None:
            if type(version) is int and version > 0:
                version = str(version)
            if not isinstance(version, str) or not VERSION.fullmatch(version):
                raise InvalidInput(f"version {brief(version)} is not a registry version; "
                                   "allowed: a positive integer like 3 or '3'")
        if alias is not None and (not isinstance(alias, str) or not ALIAS.fullmatch(alias)):
            raise InvalidInput(f"alias {brief(alias)} is not a model alias; allowed: a letter "
                               "then up to 62 letters, digits, '_' or '-' (like 'challenger')")
        slot = body.get("slot", "canary")
        if slot not in ("canary", "stable"):
            raise InvalidInput(f"slot {brief(slot)} is not known; use 'canary' or 'stable'")
        if self.loader is None:
            raise Conflict("this server has no model registry to load from")

        async with self._load_lock:  # one download at a time; serving goes on meanwhile
            try:
                model, got = await asyncio.to_thread(self.loader, version=version, alias=alias)
            except LookupError as err:
                raise ModelNotFound(str(err)) from err
            except ArtifactError as err:
                raise Unprocessable(f"version {version or alias} was not loaded: {err}") from err
            except RecursionError as err:  # a JSON file nested deeper than Python reads
                raise Unprocessable(f"version {version or alias} was not loaded: its "
                                    "model.json or checksums.json is nested too deeply to "
                                    "read") from err
            routing = self.service.load(model, got, slot)
        return self._routing_reply(routing)

    async def admin_traffic(self, request):
        body = json_object(request.body, "traffic",
                           "{'weight': 10, 'mode': 'canary' or 'shadow'}")
        weight = body.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InvalidInput(f"weight must be a number in [0, 100], got {brief(weight)}")
        mode = body.get("mode")
        if mode is not None and mode not in MODES:
            raise InvalidInput(f"mode {brief(mode)} is not known; use one of {list(MODES)}")
        return self._routing_reply(self.service.set_traffic(float(weight), mode))

    async def admin_promote(self, request):
        body = json_object(request.body or b"{}", "promote", "{'version': '3'}")
        return self._routing_reply(self.service.promote(opt_str(body, "version")))

    async def admin_drop(self, request):
        body = json_object(request.body or b"{}", "drop", "{'version': '3'}")
        return self._routing_reply(self.service.drop(opt_str(body, "version")))

    async def admin_window(self, request):
        return json_reply({"routing": self.service.routing.describe(),
                      "versions": self.service.open_window()})

    def _routing_reply(self, routing):
        describe = routing.describe()
        self.metrics.routing(describe)
        log.info("routing: %s", describe)
        return json_reply({"routing": describe})

