"""Safe defaults for a worker other hosts can reach: TLS (optionally mutual) and a shared token on every call.

python -m vlmflow_worker serve --host 0.0.0.0 --tls-cert worker.pem --tls-key worker.key \
    --tls-client-ca ca.pem --token-file token

The worker binds loopback by default. Binding any other address needs TLS and a token, or an explicit
`--insecure`: a training server that runs whatever a caller sends must not be open by accident.
Clients send the token as `authorization: Bearer <token>` metadata (the TS client and healthcheck do).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from vlmflow_worker.serve.settings import WorkerSettings

log = logging.getLogger("vlmflow.security")

TOKEN_METADATA_KEY = "authorization"


def server_credentials(settings: WorkerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured; client certificates are required when a CA is given."""
    if not settings.tls_cert or not settings.tls_key:
        return None
    pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def add_port(server: grpc.aio.Server, settings: WorkerSettings) -> int:
    """Binds host:port with TLS when configured; returns the bound port (0 when binding failed)."""
    address = f"{settings.host}:{settings.port}"
    creds = server_credentials(settings)
    return server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)


def describe(settings: WorkerSettings) -> dict[str, bool]:
    """What protects the worker, for its 'listening' log line (never the secrets themselves)."""
    return {"tls": bool(settings.tls_cert), "mutual_tls": bool(settings.tls_client_ca), "token": bool(settings.token)}


def interceptors(settings: WorkerSettings) -> list[grpc.aio.ServerInterceptor]:
    return [TokenInterceptor(settings.token)] if settings.token else []


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries `authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        supplied = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_METADATA_KEY:
                supplied = value.encode() if isinstance(value, str) else value
        if supplied is not None and hmac.compare_digest(supplied, self._expected):
            return handler
        message = (
            "missing worker token: send `authorization: Bearer <token>` metadata "
            "(set VLMFLOW_WORKER_TOKEN on the client)"
            if supplied is None
            else "invalid worker token: the client's VLMFLOW_WORKER_TOKEN does not match the worker's"
        )
        log.warning("refused call", extra={"method": handler_call_details.method, "reason": message.split(":")[0]})
        return _refuse(handler, message) if handler else handler


def _refuse(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts with UNAUTHENTICATED before running anything."""

    async def abort(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def client_channel(
    address: str,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    server_name: str | None = None,
    tls: bool = False,
) -> grpc.Channel:
    """A (sync) channel to a worker, with TLS when `tls` or a CA is given; used by the healthcheck and tests."""
    if not (tls or ca or cert):
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, creds, options=options)


def token_metadata(token: str | None) -> list[tuple[str, str]]:
    return [(TOKEN_METADATA_KEY, f"Bearer {token}")] if token else []
