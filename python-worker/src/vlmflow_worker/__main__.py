"""Command line of the worker.

python -m vlmflow_worker serve --host 127.0.0.1 --port 50051 --artifact-root .state/artifacts
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from vlmflow_worker.log import setup_logging
from vlmflow_worker.serve.settings import WorkerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmflow-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC worker")
    help_ = WorkerSettings.help()
    serve.add_argument("--host", help=help_["host"])
    serve.add_argument("--port", type=int, help=help_["port"])
    serve.add_argument("--artifact-root", type=Path, help=help_["artifact_root"])
    serve.add_argument("--data-root", type=Path, action="append", dest="data_roots", help=help_["data_roots"])
    serve.add_argument("--job-capacity", type=int, help=help_["job_capacity"])
    serve.add_argument("--gpus-per-job", type=int, help=help_["gpus_per_job"])
    serve.add_argument("--inference-gpu", type=int, help=help_["inference_gpu"])
    serve.add_argument("--tls-cert", type=Path, help=help_["tls_cert"])
    serve.add_argument("--tls-key", type=Path, help=help_["tls_key"])
    serve.add_argument("--tls-client-ca", type=Path, help=help_["tls_client_ca"])
    serve.add_argument("--token-file", type=Path, help=help_["token_file"])
    serve.add_argument("--metrics-address", help=help_["metrics_address"])
    serve.add_argument("--insecure", action="store_true", default=None, help=help_["insecure"])
    serve.add_argument("--allow-user-rewards", action="store_true", default=None, help=help_["allow_user_rewards"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "serve":
        from vlmflow_worker.serve.server import serve

        overrides = {k: v for k, v in vars(args).items() if k in WorkerSettings.help() and v is not None}
        try:
            settings = WorkerSettings(**overrides)
        except ValueError as err:
            print(f"vlmflow-worker: {err}", file=sys.stderr)
            return 2
        try:
            asyncio.run(serve(settings))
        except ValueError as err:  # settings that only the GPUs found at start can refute (devices.plan)
            print(f"vlmflow-worker: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"vlmflow-worker: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
