"""The gRPC server side of the worker.

- `server.py`: the asyncio gRPC server, its shutdown, and where each RPC is routed;
- `rpc_generate.py`, `rpc_jobs.py`: the RPC handlers (inference in this process; jobs in child processes);
- `settings.py`: WorkerSettings, filled from flags and VLMFLOW_* variables, validated on construction;
- `security.py`: TLS (optionally mutual) and the shared token, on the server and for clients;
- `health.py`: the Health RPC's answer (capacity, devices, library versions);
- `healthcheck.py`: `python -m vlmflow_worker.serve.healthcheck`, the container HEALTHCHECK.
"""
