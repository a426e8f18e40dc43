"""Monitoring: windows of the prediction log against the champion's reference, the sinks their
figures go to, the alerts people are paged by, and the actions the figures call for.

Computation and sinks are apart: a window is computed once and handed to each sink.

- ``window``: one window's figures (feature drift, cluster-aware drift, the streaming shadow's
  gap) and :func:`~pipeline.monitoring.window.monitor_window`, which computes and records them;
- ``shadow``: the streaming shadow model kept up to date by the event stream;
- ``report``: the HTML sink (a window's page, the index of windows, the figures as JSON);
- ``tracking``: the MLflow sink (one run per window, its report files as artifacts);
- ``exposition``: the Prometheus sink (the window's gauges through ``prometheus_client``),
  and ``exporter``, the small HTTP server Prometheus scrapes it from;
- ``alerts``: the alerts declared once, from the series names and the settings' thresholds;
  ``alert_tests``: their promtool cases; ``render``: ``python -m pipeline.monitoring.render``
  writes the rules, their tests, Prometheus' configuration and the ``PrometheusRule``
  (``monitoring/README.md`` holds the runbooks);
- ``actions``: what a window calls for (a retraining, at most once per cooldown), with an
  audit trail.
"""
