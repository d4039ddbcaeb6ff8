"""Typed errors of the worker. Each maps to one gRPC status (unary calls) and one FailureReason (job events),
so a caller can tell "fix your request" from "retry later" from "needs a bigger GPU"."""

from __future__ import annotations

import grpc

from vlmflow.v1 import jobs_pb2


class WorkerError(Exception):
    """Base class. `message` is a sentence a person can act on."""

    status = grpc.StatusCode.INTERNAL
    reason = jobs_pb2.FAILURE_REASON_INTERNAL

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidArgument(WorkerError):
    """A request or config field is wrong; the message names the field and the accepted values."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = jobs_pb2.FAILURE_REASON_INVALID_ARGUMENT


class BadData(WorkerError):
    """Input data is unusable: corrupt or missing images, unreadable videos, too many rows dropped."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = jobs_pb2.FAILURE_REASON_BAD_DATA


class NotFound(WorkerError):
    """A model, adapter, dataset or file does not exist (locally, or on an unreachable hub)."""

    status = grpc.StatusCode.NOT_FOUND
    reason = jobs_pb2.FAILURE_REASON_NOT_FOUND


class PathOutsideRoots(InvalidArgument):
    """A path escapes the configured data roots and artifact root (`../`, absolute paths elsewhere)."""


class FailedPrecondition(WorkerError):
    """The worker lacks what the request needs (CUDA for 4-bit quantization, a free job slot, ...)."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = jobs_pb2.FAILURE_REASON_FAILED_PRECONDITION


class WorkerBusy(WorkerError):
    """Every job slot is taken. UNAVAILABLE, so callers retry later (Temporal queues the work meanwhile)."""

    status = grpc.StatusCode.UNAVAILABLE
    reason = jobs_pb2.FAILURE_REASON_FAILED_PRECONDITION


class OutOfMemory(WorkerError):
    """The device ran out of memory; the message carries the figures and what to change."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = jobs_pb2.FAILURE_REASON_OUT_OF_MEMORY


class StorageError(WorkerError):
    """The artifact store could not be written (read-only, full); earlier artifacts are left intact."""

    status = grpc.StatusCode.UNAVAILABLE
    reason = jobs_pb2.FAILURE_REASON_STORAGE


class Cancelled(WorkerError):
    """The job was cancelled by a caller."""

    status = grpc.StatusCode.CANCELLED
    reason = jobs_pb2.FAILURE_REASON_CANCELLED


class Stuck(WorkerError):
    """The job sent no event for the worker's stuck limit and was stopped; a retry resumes from its checkpoint."""

    status = grpc.StatusCode.ABORTED
    reason = jobs_pb2.FAILURE_REASON_STUCK


ERROR_TYPE_TRAILER = "vlmflow-error-type"


async def abort_with(context: grpc.aio.ServicerContext, error: WorkerError) -> None:
    """Ends a call with the error's status and message, and its class in a trailer: a status alone is ambiguous
    (UNAVAILABLE is both "every job slot is taken, wait" and "the artifact store failed")."""
    await context.abort(error.status, error.message, ((ERROR_TYPE_TRAILER, type(error).__name__),))
