"""Monitoring: windows of the prediction log against the champion's reference, reports,
Prometheus figures, and the actions they call for."""
