"""A simulated pool of ComfyUI servers for the scheduling benchmarks (see ``server.py``, ``workload.py``)."""
