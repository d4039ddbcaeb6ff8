"""The gRPC server: an asyncio WorkerService whose handlers delegate to one module per concern.

python -m vlmflow_worker serve --port 0
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from http.server import HTTPServer

import grpc

from vlmflow.v1 import worker_pb2, worker_pb2_grpc
from vlmflow_worker import devices
from vlmflow_worker.serve import health, security
from vlmflow_worker.serve.metrics import WorkerMetrics
from vlmflow_worker.serve.rpc_generate import GenerateRpcs
from vlmflow_worker.serve.rpc_jobs import JobRpcs
from vlmflow_worker.serve.settings import WorkerSettings, parse_address

log = logging.getLogger("vlmflow.server")


class WorkerService(GenerateRpcs, JobRpcs, worker_pb2_grpc.WorkerServiceServicer):
    """Health lives here; each other RPC group lives in its own module (rpc_generate, rpc_jobs)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.slots = devices.plan(settings)  # the GPUs, read once through NVML; raises ValueError naming a setting
        self.capacity = self.slots.capacity
        self.metrics = WorkerMetrics()
        self.metrics.job_capacity.set(self.capacity)
        self.metrics.watch_gpus(self.slots.gpus)
        self.metrics_server: HTTPServer | None = None  # started by start_server when settings.metrics_address is set
        devices.use_for_inference(self.slots)
        self.setup_generate()
        self.setup_jobs()
        self.registry.slots = self.slots  # setup_jobs builds the registry from the capacity alone
        inference = self.slots.inference
        log.info(
            "devices",
            extra={
                "gpus": [g.index for g in self.slots.gpus],
                "job_gpus": [g.index for g in self.slots.job_gpus],
                "gpus_per_job": self.slots.gpus_per_job,
                "job_capacity": self.capacity,
                "inference_gpu": inference.index if inference else "cpu",
                "inference_shares_a_job_gpu": self.slots.inference_shared,
            },
        )

    async def close(self) -> None:
        await self.close_jobs()
        await self.close_generate()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()

    @property
    def worker_id(self) -> str:
        # settings.port is the bound port once the server has started (it may have been 0).
        return f"{socket.gethostname()}:{self.settings.port}:{os.getpid()}"

    async def Health(self, request: worker_pb2.HealthRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        gpus = health.gpus(self.slots)
        return worker_pb2.HealthResponse(
            device="cuda" if gpus else "cpu",
            gpus=gpus,
            versions=health.library_versions(),
            job_capacity=self.capacity,
            jobs_running=self.jobs_running(),
            worker_id=self.worker_id,
            artifact_root=str(self.settings.artifact_root),
        )


async def start_server(settings: WorkerSettings) -> tuple[grpc.aio.Server, WorkerService]:
    """Binds and starts the server; settings.port is the bound port afterwards (it may have been 0)."""
    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    server = grpc.aio.server(
        interceptors=security.interceptors(settings),
        options=[
            # Inline images in Generate requests; everything bigger goes through the artifact store.
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # Without this a second worker silently shares the port with the first.
            ("grpc.so_reuseport", 0),
            # Keepalive: a job stream can be silent for minutes (a long eval batch), and a dead peer behind a NAT or
            # a crashed host must still be noticed. Clients ping every 30 s (src/python-worker-client.ts); allow it.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    service = WorkerService(settings)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(service, server)
    try:
        port = security.add_port(server, settings)
    except RuntimeError as err:  # grpc raises RuntimeError, not OSError, when the bind fails
        port = 0
        cause: Exception | None = err
    else:
        cause = None
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}: the port is in use or not allowed") from cause
    settings.port = port
    if settings.metrics_address is not None:
        host, metrics_port = parse_address("metrics_address", settings.metrics_address)
        service.metrics_server = service.metrics.serve(host, metrics_port)
        # The bound port, for the 'listening' line (it may have been 0).
        settings.metrics_address = f"{settings.metrics_address.rpartition(':')[0]}:{service.metrics_server.server_port}"
    await server.start()
    return server, service


async def serve(settings: WorkerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server, service = await start_server(settings)
    # Launchers (the TS side, tests) read this line to learn the port when it was 0.
    metrics = {"metrics_address": settings.metrics_address} if settings.metrics_address else {}
    log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": settings.port,
            "pid": os.getpid(),
            **security.describe(settings),
            **metrics,
        },
    )
    await stop.wait()
    log.info("stopping")
    await service.close()
    await server.stop(grace=5)
