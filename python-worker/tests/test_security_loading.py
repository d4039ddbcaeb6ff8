"""Safe defaults for what the worker loads: adapters from safetensors only, no hub code unless asked, no pickles.

Static checks walk the package source, so a new loading site that breaks a rule fails here with its file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vlmflow_worker.errors import InvalidArgument
from vlmflow_worker.models import ModelSpec, _load_adapter

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmflow_worker"


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_an_adapter_with_pickled_weights_is_refused(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InvalidArgument, match="pickled weights are refused, convert them to safetensors"):
        _load_adapter(None, ModelSpec("unused", adapter=str(adapter)))


def test_remote_code_is_off_unless_asked() -> None:
    assert ModelSpec("org/model").trust_remote_code is False
    offenders = [name for name, text in _sources().items() if re.search(r"trust_remote_code\s*=\s*True", text)]
    assert offenders == [], f"trust_remote_code=True hard-coded in {offenders}"


def test_nothing_unpickles() -> None:
    offenders = []
    for name, text in _sources().items():
        if re.search(r"\bpickle\.loads?\(", text):
            offenders.append(f"{name}: pickle.load")
        for call in re.finditer(r"\btorch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{name}: torch.load without weights_only=True")
    assert offenders == []


def test_every_adapter_load_goes_through_the_safetensors_check() -> None:
    offenders = [
        name
        for name, text in _sources().items()
        if name != "models.py" and re.search(r"PeftModel\.from_pretrained\(|\.load_adapter\(", text)
    ]
    assert offenders == [], f"adapters loaded without the safetensors check in {offenders}"
