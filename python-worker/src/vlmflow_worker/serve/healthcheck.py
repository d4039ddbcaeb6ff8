"""Calls the worker's Health RPC once and exits 0 when it answers: the container HEALTHCHECK.

python -m vlmflow_worker.serve.healthcheck --address 127.0.0.1:50051

Reads the same client environment as the TS worker: VLMFLOW_WORKER_TLS / _TLS_CA / _TLS_CLIENT_CERT /
_TLS_CLIENT_KEY / _TLS_SERVER_NAME and VLMFLOW_WORKER_TOKEN / _TOKEN_FILE. Inside the worker's own container
the server certificate (VLMFLOW_WORKER_TLS_CERT) is the fallback trust root, which covers self-signed setups.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc

from vlmflow.v1 import worker_pb2, worker_pb2_grpc
from vlmflow_worker.serve import security
from vlmflow_worker.serve.settings import read_token_file


def _path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def check(address: str, timeout: float) -> worker_pb2.HealthResponse:
    ca = _path("VLMFLOW_WORKER_TLS_CA") or _path("VLMFLOW_WORKER_TLS_CERT")
    channel = security.client_channel(
        address,
        ca=ca,
        cert=_path("VLMFLOW_WORKER_TLS_CLIENT_CERT"),
        key=_path("VLMFLOW_WORKER_TLS_CLIENT_KEY"),
        server_name=os.environ.get("VLMFLOW_WORKER_TLS_SERVER_NAME") or None,
        tls=os.environ.get("VLMFLOW_WORKER_TLS", "").lower() in ("1", "true", "yes"),
    )
    token_file = _path("VLMFLOW_WORKER_TOKEN_FILE")
    token = read_token_file(token_file) if token_file else os.environ.get("VLMFLOW_WORKER_TOKEN")
    with channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        return stub.Health(worker_pb2.HealthRequest(), timeout=timeout, metadata=security.token_metadata(token))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmflow-worker-healthcheck", description=__doc__.splitlines()[0])
    default_address = os.environ.get("VLMFLOW_WORKER_ADDRESS") or (
        f"127.0.0.1:{os.environ.get('VLMFLOW_WORKER_PORT', '50051')}"
    )
    parser.add_argument("--address", default=default_address, help="host:port of the worker")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        reply = check(args.address, args.timeout)
    except grpc.RpcError as err:
        print(f"unhealthy: {args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    summary = {"device": reply.device, "job_capacity": reply.job_capacity, "jobs_running": reply.jobs_running}
    print(json.dumps({"healthy": True, "worker_id": reply.worker_id, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
