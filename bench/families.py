"""The model a benchmark runs, per model family (issue 17): on CPU the family's tiny fixture, on CUDA its real
architecture with random weights (fixtures/architectures.py and family_architectures.py: the published configs,
processors and token ids).

    from families import FAMILIES, model_folder   # bench/ is on sys.path when a bench script runs
    model_folder("qwen2_5_vl", "cpu")             # the tiny Qwen2.5-VL fixture, built once under .state/models/
"""

from __future__ import annotations

from pathlib import Path

from machine import REPO

MODELS = REPO / ".state" / "models"
FAMILIES = ("idefics3", "smolvlm2", "qwen2_5_vl", "qwen3_vl")
# The real architecture each family is benchmarked at on CUDA (fixtures/architectures.py, family_architectures.py).
ARCHITECTURES = {
    "idefics3": "smolvlm-2.2b",
    "smolvlm2": "smolvlm2-2.2b",
    "qwen2_5_vl": "qwen2.5-vl-3b",
}


def model_folder(family: str, device: str) -> Path:
    """The tiny fixture of `family` (CPU) or its real architecture with random weights (CUDA)."""
    if device == "cpu":
        return tiny_folder(family)
    if family not in ARCHITECTURES:
        raise SystemExit(
            f"no published {family} configuration is recorded in fixtures/architectures.py: run --family "
            f"{family} on CPU (the tiny fixture), or on CUDA one of {', '.join(ARCHITECTURES)}"
        )
    shape = ARCHITECTURES[family]
    if family == "idefics3":
        from vlmflow_worker.fixtures.architectures import build_architecture

        return build_architecture(shape, MODELS / f"{shape}-random")
    from vlmflow_worker.fixtures.family_architectures import build_family_architecture

    return build_family_architecture(shape, MODELS / f"{shape}-random")


def tiny_folder(family: str) -> Path:
    if family == "idefics3":
        from vlmflow_worker.fixtures.tiny_model import build_tiny_model

        return build_tiny_model(MODELS / "tiny-idefics3")
    if family == "smolvlm2":
        from vlmflow_worker.fixtures.tiny_smolvlm2 import build_tiny_smolvlm2

        return build_tiny_smolvlm2(MODELS / "tiny-smolvlm2")
    if family == "qwen2_5_vl":
        from vlmflow_worker.fixtures.tiny_qwen2_5_vl import build_tiny_qwen2_5_vl

        return build_tiny_qwen2_5_vl(MODELS / "tiny-qwen2_5_vl")
    if family == "qwen3_vl":
        from vlmflow_worker.fixtures.tiny_qwen3_vl import build_tiny_qwen3_vl

        return build_tiny_qwen3_vl(MODELS / "tiny-qwen3_vl")
    raise SystemExit(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")


def model_name(family: str, device: str) -> str:
    """How result files and tables name the model."""
    if device == "cpu":
        return f"tiny-{family}"
    return f"{ARCHITECTURES.get(family, family)}-arch (random weights)"
