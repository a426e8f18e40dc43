"""The options of the inference server: one typed model, from which both entry points derive
their flags, ``kmeans-serve`` (argparse, :mod:`pipeline.serving.__main__`: the serving image
has no typer) and the platform's ``kmeans serve`` (typer, ``pipeline.cli.options_from``).

Where the server listens (``host``, ``port``, ``grpc_port``) defaults to the settings
(``KMEANS_SERVING_HOST``, ``KMEANS_SERVING_PORT``, ``KMEANS_GRPC_PORT``): None here means "as
the settings say".
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServeParams(BaseModel):
    """What to serve and how (``kmeans-serve``, ``kmeans serve``)."""

    model_config = ConfigDict(extra="forbid")

    alias: str = Field("champion", description="Model alias to serve as the stable version.")
    version: str | None = Field(None, description="Serve this registry version instead of the "
                                                  "alias (KServe canary revisions).")
    canary_alias: str = Field("challenger", description="Alias loaded as the canary when it "
                                                        "exists ('' for none).")
    # The modes of pipeline.serving.model.MODES (a test keeps the two equal).
    canary_mode: Literal["shadow", "canary"] = Field(
        "shadow", description="shadow: the canary scores, the stable answers; canary: the "
                              "canary answers its weight's share.")
    canary_weight: float = Field(0.0, ge=0, le=100, description="Percent of keys the canary "
                                                                "answers (canary mode).")
    host: str | None = Field(None, description="Bind address (KMEANS_SERVING_HOST).")
    port: int | None = Field(None, ge=0, le=65535, description="Port (KMEANS_SERVING_PORT).")
    grpc_port: int | None = Field(None, ge=0, le=65535,
                                  description="Port of the Open Inference Protocol's gRPC "
                                              "service beside REST (KMEANS_GRPC_PORT); unset: "
                                              "no gRPC.")
    feast: bool = Field(True, description="Resolve customer ids through the Feast online "
                                          "store; off: the server needs no feature store and "
                                          "answers lookups by id with 503.")

    def setting_overrides(self) -> dict:
        """The settings these options override (flat names, as ``load_settings`` takes them)."""
        return {k: v for k, v in (("serving_host", self.host), ("serving_port", self.port),
                                  ("grpc_port", self.grpc_port)) if v is not None}
