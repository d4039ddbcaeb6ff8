"""Safe defaults for a worker other hosts can reach: TLS (optionally mutual) and a shared token on every call.

python -m vlmflow_worker serve --host 0.0.0.0 --tls-cert worker.pem --tls-key worker.key \
    --tls-client-ca ca.pem --token-file token

The worker binds loopback by default. Binding any other address needs TLS and a token, or an explicit
`--insecure`: a training server that runs whatever a caller sends must not be open by accident.
Clients send the token as `authorization: Bearer <token>` metadata (the TS client and healthcheck do).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from vlmflow_worker.settings import WorkerSettings

log = logging.getLogger("vlmflow.security")

TOKEN_METADATA_KEY = "authorization"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve to anything


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ValueError(f"token_file: cannot read {path}: {err.strerror}") from err
    if not token:
        raise ValueError(f"token_file: {path} is empty; write the shared token into it")
    return token


def validate(settings: WorkerSettings) -> None:
    """Checks the TLS/token settings and the bind address; raises ValueError naming the field and the fix."""
    if settings.token_file:
        from_file = read_token_file(settings.token_file)
        if settings.token and settings.token != from_file:
            raise ValueError("token: VLMFLOW_WORKER_TOKEN and the token file differ; set only one of them")
        settings.token = from_file
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("tls_cert and tls_key: TLS needs both the certificate and its private key")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ValueError("tls_client_ca: client certificates (mTLS) need server TLS too; set tls_cert and tls_key")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise ValueError(f"{name}: {path} is not a file")
    if is_loopback(settings.host) or settings.insecure:
        return
    missing = [what for what, ok in (("TLS", settings.tls_cert), ("a token", settings.token)) if not ok]
    if missing:
        raise ValueError(
            f"host: refusing to bind {settings.host} without {' and '.join(missing)}: other machines could run jobs "
            "on this worker. Set --tls-cert/--tls-key and VLMFLOW_WORKER_TOKEN (or --token-file), "
            "or pass --insecure (VLMFLOW_WORKER_INSECURE=1) on a network you trust."
        )


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
