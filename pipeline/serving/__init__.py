"""KServe-compatible inference server (Open Inference Protocol v2 and KServe v1)."""
