"""The worker's Prometheus metrics: jobs, training speed, Generate, GPU memory, on an HTTP endpoint of their own.

    python -m vlmflow_worker serve --metrics-address 127.0.0.1:9465
    curl -s 127.0.0.1:9465/metrics | grep ^vlmflow_

Everything is read from what the server already sees, so metrics cost the jobs nothing:
- jobs: started, running and waiting (for a slot), ended with their outcome, by kind;
- training: steps and samples/s from the progress events the server relays from its job processes (the trainer's
  own figures; never from jobs another worker owns, which that worker counts);
- Generate: request latency (a histogram, successful requests), items and answer tokens, requests by gRPC code;
- GPUs: memory used and total per GPU this worker may use, read through NVML at scrape time (no CUDA context, as
  devices.py); no GPU series on a CPU worker.
Counters and gauges are changed on the event loop and read by the endpoint's thread; prometheus_client locks them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from http.server import HTTPServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vlmflow.v1 import jobs_pb2, worker_pb2
from vlmflow_worker import devices

# No `<counter>_created` series: a timestamp per series that Prometheus does not need, doubling what is scraped.
disable_created_metrics()

TRAIN_KINDS = (jobs_pb2.JOB_KIND_TRAIN_SFT, jobs_pb2.JOB_KIND_TRAIN_DPO)
# A job id refused for want of a slot counts as waiting until it starts, or until it has not asked again for this
# long: Temporal retries a busy stage at least every minute by default (a stage's retry.maximum), so a job id
# silent for five minutes belongs to a run that stopped waiting (cancelled, or its stage went to another host).
WAITING_FORGET_S = 300.0
# Generate latency: a cached tiny model answers in tens of milliseconds; a first request that loads a 2B model, or a
# large batch of video items, takes minutes.
GENERATE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


def kind_label(kind: int) -> str:
    """JOB_KIND_TRAIN_SFT -> train_sft."""
    return jobs_pb2.JobKind.Name(kind).removeprefix("JOB_KIND_").lower()


KIND_LABELS = [kind_label(k) for k in jobs_pb2.JobKind.values() if k != jobs_pb2.JOB_KIND_UNSPECIFIED]


def outcome(event: jobs_pb2.JobEvent) -> tuple[str, str]:
    """(outcome, reason) of a terminal event: succeeded/none, cancelled/cancelled, or failed/<reason>."""
    if event.WhichOneof("event") == "completed":
        return "succeeded", "none"
    reason = jobs_pb2.FailureReason.Name(event.failed.reason).removeprefix("FAILURE_REASON_").lower()
    return ("cancelled" if event.failed.reason == jobs_pb2.FAILURE_REASON_CANCELLED else "failed"), reason


class _GpuMemory(Collector):
    """GPU memory at scrape time, through NVML, for the GPUs the worker was started with."""

    def __init__(self, gpus: Sequence[devices.Gpu]) -> None:
        self.indices = {g.index for g in gpus}

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        used, total = self._families()
        if self.indices:
            for gpu in devices.read_gpus():
                if gpu.index in self.indices:
                    labels = [str(gpu.index), gpu.name]
                    used.add_metric(labels, gpu.total_memory_bytes - gpu.free_memory_bytes)
                    total.add_metric(labels, gpu.total_memory_bytes)
        yield used
        yield total

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["gpu", "name"]
        return (
            GaugeMetricFamily(
                "vlmflow_gpu_memory_used_bytes", "GPU memory in use (every process: jobs and inference)", labels=labels
            ),
            GaugeMetricFamily("vlmflow_gpu_memory_total_bytes", "GPU memory in all", labels=labels),
        )


class _Waiting(Collector):
    """Jobs refused for want of a free slot that have not started since: by kind, at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, tuple[str, float]] = {}  # job id -> (kind label, last refusal, monotonic)

    def refused(self, job_id: str, kind: str) -> None:
        with self._lock:
            self._since[job_id] = (kind, time.monotonic())

    def started(self, job_id: str) -> None:
        with self._lock:
            self._since.pop(job_id, None)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = time.monotonic()
        with self._lock:
            for job_id in [j for j, (_, at) in self._since.items() if now - at > WAITING_FORGET_S]:
                del self._since[job_id]
            kinds = [kind for kind, _ in self._since.values()]
        family = self._family()
        for kind in KIND_LABELS:
            family.add_metric([kind], kinds.count(kind))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "vlmflow_jobs_waiting",
            f"Jobs refused for want of a free job slot and not started since (forgotten after {WAITING_FORGET_S:.0f} "
            "s without asking again)",
            labels=["kind"],
        )


class WorkerMetrics:
    """One worker's metrics, in a registry of its own (tests run several servers and registries in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        r = self.registry
        self.job_capacity = Gauge(
            "vlmflow_job_capacity", "Jobs this worker runs at once (Health's job_capacity)", registry=r
        )
        self.jobs_running = Gauge("vlmflow_jobs_running", "Jobs this worker's processes run now", ["kind"], registry=r)
        self.jobs_started = Counter(
            "vlmflow_jobs_started", "Jobs started here (attempts; attaching is not one)", ["kind"], registry=r
        )
        self.jobs_ended = Counter(
            "vlmflow_jobs_ended",
            "Jobs run here that ended: outcome succeeded, failed or cancelled; reason the typed FailureReason",
            ["kind", "outcome", "reason"],
            registry=r,
        )
        self.train_steps = Counter("vlmflow_train_steps", "Optimizer steps trained here", ["kind"], registry=r)
        self.train_samples_per_second = Gauge(
            "vlmflow_train_samples_per_second",
            "A running training's samples/s at its last log step",
            ["kind", "job_id"],
            registry=r,
        )
        self.train_tokens_per_second = Gauge(
            "vlmflow_train_tokens_per_second",
            "A running training's tokens/s at its last log step",
            ["kind", "job_id"],
            registry=r,
        )
        self.generate_seconds = Histogram(
            "vlmflow_generate_request_seconds",
            "Seconds a successful Generate request took, model loading included",
            buckets=GENERATE_BUCKETS,
            registry=r,
        )
        self.generate_items = Counter("vlmflow_generate_items", "Items Generate answered", registry=r)
        self.generate_answer_tokens = Counter(
            "vlmflow_generate_answer_tokens", "Tokens Generate answered with", registry=r
        )
        self.generate_requests = Counter(
            "vlmflow_generate_requests", "Generate requests by gRPC status code", ["code"], registry=r
        )
        self._waiting = _Waiting()
        r.register(self._waiting)
        self._gpus = _GpuMemory([])
        r.register(self._gpus)
        self._last_step: dict[str, int] = {}  # per running training: the step last counted
        # Every kind from the start, at 0: a rate over a series that appears only at its first job misses that job.
        for kind in KIND_LABELS:
            self.jobs_running.labels(kind)
            self.jobs_started.labels(kind)
        for kind in TRAIN_KINDS:
            self.train_steps.labels(kind_label(kind))
        self.generate_requests.labels("OK")

    def watch_gpus(self, gpus: Sequence[devices.Gpu]) -> None:
        self._gpus.indices = {g.index for g in gpus}

    # ---- jobs (called by the job registry, on the event loop) ----

    def job_refused(self, job_id: str, kind: int) -> None:
        self._waiting.refused(job_id, kind_label(kind))

    def job_started(self, job_id: str, kind: int) -> None:
        self._waiting.started(job_id)
        self.jobs_started.labels(kind_label(kind)).inc()
        self.jobs_running.labels(kind_label(kind)).inc()

    def job_events(self, job_id: str, kind: int, events: Iterable[jobs_pb2.JobEvent]) -> None:
        """Training steps and speed from a local job's events, as the server relays them."""
        if kind not in TRAIN_KINDS:
            return
        label = kind_label(kind)
        for event in events:
            which = event.WhichOneof("event")
            if which == "accepted":  # a resumed training counts from where it resumed
                self._last_step[job_id] = event.accepted.resumed_from_step
            elif which == "progress":
                progress = event.progress
                last = self._last_step.setdefault(job_id, progress.step)
                if progress.step > last:
                    self.train_steps.labels(label).inc(progress.step - last)
                    self._last_step[job_id] = progress.step
                if progress.samples_per_second > 0:
                    self.train_samples_per_second.labels(label, job_id).set(progress.samples_per_second)
                    self.train_tokens_per_second.labels(label, job_id).set(progress.tokens_per_second)

    def job_ended(self, job_id: str, kind: int, last: jobs_pb2.JobEvent | None) -> None:
        label = kind_label(kind)
        self.jobs_running.labels(label).dec()
        if last is not None:
            self.jobs_ended.labels(label, *outcome(last)).inc()
        self._last_step.pop(job_id, None)
        for gauge in (self.train_samples_per_second, self.train_tokens_per_second):
            gauge.remove(label, job_id)  # an ended job has no speed (a no-op for one that never logged one)

    # ---- Generate ----

    def generate_answered(self, response: worker_pb2.GenerateResponse, seconds: float) -> None:
        self.generate_seconds.observe(seconds)
        self.generate_items.inc(len(response.results))
        self.generate_answer_tokens.inc(sum(r.answer_tokens for r in response.results))

    # ---- the endpoint ----

    def serve(self, host: str, port: int) -> HTTPServer:
        """Starts the /metrics endpoint in a daemon thread; raises OSError naming the address when it cannot bind."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise OSError(
                f"metrics_address {host}:{port}: cannot serve metrics there ({err.strerror or err}); choose a free "
                "port (VLMFLOW_WORKER_METRICS_ADDRESS or --metrics-address), or unset it to serve none"
            ) from err
        return server
