"""``gpufleet emulate``: an OpenAI-compatible replica that runs on the capacity model instead of a GPU.

Test infrastructure and the demo backend: the planned replica's scheduler and step times, served in real
time over vLLM's HTTP API, with the health, readiness and metrics endpoints of the profile's engine (vLLM's
``/metrics`` families, or another engine's catalog signals) and injectable faults.
"""
