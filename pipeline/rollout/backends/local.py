"""The local rollout backend: the inference server's admin API (one server, both slots)."""

from __future__ import annotations

import httpx

from pipeline.rollout.base import RolloutError, Step


class LocalBackend:
    """The inference server's admin API (one server holding both slots)."""

    def __init__(self, url: str, admin_token: str, timeout: float = 120):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {admin_token}"})

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        reply = self._http.request(method, path, json=body)
        if reply.status_code != 200:
            try:
                message = reply.json().get("error", reply.text)
            except ValueError:
                message = reply.text
            raise RolloutError(f"{method} {self.url}{path} answered {reply.status_code}: "
                               f"{message}")
        return reply.json()

    def routing(self) -> dict:
        return self._call("GET", "/admin/state")["routing"]

    def load(self, version: str, slot: str = "canary") -> dict:
        return self._call("POST", "/admin/load", {"version": version, "slot": slot})

    def traffic(self, step: Step) -> dict:
        return self._call("POST", "/admin/traffic", {"weight": step.weight, "mode": step.mode})

    def promote(self, version: str) -> dict:
        return self._call("POST", "/admin/promote", {"version": version})

    def drop(self, version: str) -> dict:
        return self._call("POST", "/admin/drop", {"version": version})

    def window(self) -> dict:
        return self._call("POST", "/admin/window")["versions"]

    def live(self) -> dict:
        return self._call("GET", "/admin/state")["window"]
