"""Safe defaults: TLS (and mutual TLS) with certificates made at test time, the shared token on every call,
and the refusal to bind a non-loopback address without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from vlmflow.v1 import worker_pb2, worker_pb2_grpc
from vlmflow_worker.serve import security, settings
from vlmflow_worker.serve.settings import WorkerSettings

from .conftest import WorkerProcess, start_worker

GEN_CERTS = Path(__file__).resolve().parents[2] / "docker" / "gen-certs.sh"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["sh", str(GEN_CERTS), str(out), "localhost", "127.0.0.1"], check=True, capture_output=True)
    return out


def _serve(tmp_path_factory: pytest.TempPathFactory, certs: Path, *extra: str) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("artifacts"),
        *("--tls-cert", str(certs / "worker.pem"), "--tls-key", str(certs / "worker.key")),
        *("--token-file", str(certs / "token"), *extra),
    )
    yield proc
    proc.process.terminate()
    proc.process.wait(timeout=30)


@pytest.fixture(scope="module")
def tls_worker(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[WorkerProcess]:
    yield from _serve(tmp_path_factory, certs)


@pytest.fixture(scope="module")
def mtls_worker(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[WorkerProcess]:
    yield from _serve(tmp_path_factory, certs, "--tls-client-ca", str(certs / "ca.pem"))


def _stub(worker: WorkerProcess, certs: Path, *, client_cert: bool = False) -> worker_pb2_grpc.WorkerServiceStub:
    channel = security.client_channel(
        f"localhost:{worker.port}",
        ca=certs / "ca.pem",
        cert=certs / "client.pem" if client_cert else None,
        key=certs / "client.key" if client_cert else None,
    )
    return worker_pb2_grpc.WorkerServiceStub(channel)


def _token(certs: Path) -> list[tuple[str, str]]:
    return security.token_metadata((certs / "token").read_text().strip())


def test_tls_with_the_token_answers(tls_worker: WorkerProcess, certs: Path) -> None:
    reply = _stub(tls_worker, certs).Health(worker_pb2.HealthRequest(), timeout=30, metadata=_token(certs))
    assert reply.job_capacity >= 1


def test_a_wrong_token_is_refused(tls_worker: WorkerProcess, certs: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _stub(tls_worker, certs).Health(worker_pb2.HealthRequest(), timeout=30, metadata=security.token_metadata("x"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid worker token" in err.value.details()


def test_a_call_without_a_token_is_refused(tls_worker: WorkerProcess, certs: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _stub(tls_worker, certs).Health(worker_pb2.HealthRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing worker token" in err.value.details()
    assert "VLMFLOW_WORKER_TOKEN" in err.value.details()


def test_streaming_calls_are_checked_too(tls_worker: WorkerProcess, certs: Path) -> None:
    events = _stub(tls_worker, certs).WatchJob(worker_pb2.WatchJobRequest(job_id="anything"), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        list(events)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_plaintext_client_cannot_talk_to_a_tls_worker(tls_worker: WorkerProcess, certs: Path) -> None:
    stub = worker_pb2_grpc.WorkerServiceStub(grpc.insecure_channel(f"127.0.0.1:{tls_worker.port}"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Health(worker_pb2.HealthRequest(), timeout=10, metadata=_token(certs))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_worker_ca_fails(tls_worker: WorkerProcess, certs: Path) -> None:
    stub = worker_pb2_grpc.WorkerServiceStub(security.client_channel(f"localhost:{tls_worker.port}", tls=True))
    with pytest.raises(grpc.RpcError) as err:
        stub.Health(worker_pb2.HealthRequest(), timeout=10, metadata=_token(certs))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(mtls_worker: WorkerProcess, certs: Path) -> None:
    ok = _stub(mtls_worker, certs, client_cert=True).Health(
        worker_pb2.HealthRequest(), timeout=30, metadata=_token(certs)
    )
    assert ok.job_capacity >= 1
    with pytest.raises(grpc.RpcError) as err:
        _stub(mtls_worker, certs).Health(worker_pb2.HealthRequest(), timeout=10, metadata=_token(certs))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def _healthcheck(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VLMFLOW_WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "vlmflow_worker.serve.healthcheck", "--address", f"localhost:{port}"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_uses_the_client_environment(mtls_worker: WorkerProcess, certs: Path) -> None:
    env = {
        "VLMFLOW_WORKER_TLS_CA": str(certs / "ca.pem"),
        "VLMFLOW_WORKER_TLS_CLIENT_CERT": str(certs / "client.pem"),
        "VLMFLOW_WORKER_TLS_CLIENT_KEY": str(certs / "client.key"),
        "VLMFLOW_WORKER_TOKEN_FILE": str(certs / "token"),
    }
    ok = _healthcheck(mtls_worker.port, env)
    assert ok.returncode == 0, ok.stderr
    assert '"healthy": true' in ok.stdout
    bad = _healthcheck(mtls_worker.port, {**env, "VLMFLOW_WORKER_TOKEN_FILE": "", "VLMFLOW_WORKER_TOKEN": "nope"})
    assert bad.returncode == 1
    assert "UNAUTHENTICATED" in bad.stderr


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert settings.is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "worker.example.com"):
        assert not settings.is_loopback(host), host


def test_a_public_bind_needs_tls_and_a_token(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(ValueError, match="refusing to bind 0.0.0.0 without TLS and a token.*--insecure"):
        WorkerSettings(host="0.0.0.0", artifact_root=tmp_path)
    with pytest.raises(ValueError, match="without a token"):
        WorkerSettings(
            host="0.0.0.0", artifact_root=tmp_path, tls_cert=certs / "worker.pem", tls_key=certs / "worker.key"
        )
    WorkerSettings(host="0.0.0.0", artifact_root=tmp_path, insecure=True)
    secured = WorkerSettings(
        host="0.0.0.0",
        artifact_root=tmp_path,
        tls_cert=certs / "worker.pem",
        tls_key=certs / "worker.key",
        token_file=certs / "token",
    )
    assert secured.token == (certs / "token").read_text().strip()
    assert secured.token not in repr(secured)


def test_the_cli_refuses_a_public_bind_with_a_clear_message(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VLMFLOW_WORKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "vlmflow_worker", "serve", "--host", "0.0.0.0", "--artifact-root", str(tmp_path)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0" in result.stderr
    assert "--insecure" in result.stderr


def test_half_configured_tls_is_an_error(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        WorkerSettings(artifact_root=tmp_path, tls_cert=certs / "worker.pem")
    with pytest.raises(ValueError, match="tls_client_ca"):
        WorkerSettings(artifact_root=tmp_path, tls_client_ca=certs / "ca.pem")
    with pytest.raises(ValueError, match="not a file"):
        WorkerSettings(artifact_root=tmp_path, tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "missing.key")


def test_the_listening_line_says_what_protects_the_worker_and_never_the_token(tmp_path: Path, certs: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VLMFLOW_WORKER_")}
    token = (certs / "token").read_text().strip()
    args = ["--tls-cert", str(certs / "worker.pem"), "--tls-key", str(certs / "worker.key")]
    process = subprocess.Popen(
        [sys.executable, "-m", "vlmflow_worker", "serve", "--port", "0", "--artifact-root", str(tmp_path), *args],
        env={**clean, "VLMFLOW_WORKER_TOKEN": token, "PYTHONUNBUFFERED": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if '"msg": "listening"' in line:
            break
    process.terminate()
    lines.extend(process.stderr.readlines())
    process.wait(timeout=30)
    listening = json.loads(next(line for line in lines if '"msg": "listening"' in line))
    assert (listening["tls"], listening["mutual_tls"], listening["token"]) == (True, False, True)
    assert not any(token in line for line in lines)
