"""``gpufleet emulate``: an OpenAI-compatible vLLM replica that runs on the capacity model instead of a GPU.

Test infrastructure and the demo backend: the planned replica's scheduler and step times, served in real
time over vLLM's HTTP API and ``/metrics``, with injectable faults.
"""
