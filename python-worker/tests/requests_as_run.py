"""Decodes worker requests the way the jobs do and prints the settings each job would run with, one JSON line per
request: what test/config-fidelity.test.ts compares with the pipeline config a person wrote.

stdin: JSON lines {"kind": "sft" | "dpo" | "grpo" | "prepare" | "evaluate" | "export", "request": <base64 protobuf>}
stdout: JSON lines {"settings": {...}} or {"error": "<the worker's InvalidArgument message>"}
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from typing import Any

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import WorkerError
from vlmflow_worker.evaluate.job import settings_of as evaluate_settings
from vlmflow_worker.prep.job import settings_of as prepare_settings
from vlmflow_worker.tracking.settings import settings_of as tracking_settings
from vlmflow_worker.train.config import SFTConfig
from vlmflow_worker.train.dpo import DPOTrainConfig
from vlmflow_worker.train.grpo import GRPOTrainConfig


def settings(kind: str, data: bytes) -> dict[str, Any]:
    """The job's settings, its tracking settings (TrackingSettings) among them at the top level."""
    if kind in ("sft", "dpo", "grpo"):
        config_class = {"sft": SFTConfig, "dpo": DPOTrainConfig, "grpo": GRPOTrainConfig}[kind]
        values = dataclasses.asdict(config_class.from_request(jobs_pb2.TrainRequest.FromString(data), "d", "o"))
        for i, reward in enumerate(values.get("rewards", [])):  # "rewards[0].weight": one setting per reward field
            values |= {f"rewards[{i}].{name}": value for name, value in reward.items()}
        return values | values.pop("tracking")
    if kind == "prepare":
        return prepare_settings(jobs_pb2.PrepareDatasetRequest.FromString(data))
    if kind == "evaluate":
        request = jobs_pb2.EvaluateRequest.FromString(data)
        return evaluate_settings(request) | dataclasses.asdict(tracking_settings(request))
    if kind == "export":
        return dataclasses.asdict(tracking_settings(jobs_pb2.ExportRequest.FromString(data)))
    raise ValueError(f"unknown kind {kind!r}")


def main() -> None:
    for line in sys.stdin:
        item = json.loads(line)
        try:
            answer: dict[str, Any] = {"settings": settings(item["kind"], base64.b64decode(item["request"]))}
        except WorkerError as err:
            answer = {"error": str(err)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
