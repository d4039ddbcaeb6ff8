"""Model loading: a local folder through the hub code path, LoRA adapters, quantization refused on CPU,
offline and missing models reported as NotFound, and the memory-bounded cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from vlmflow.v1 import common_pb2
from vlmflow_worker import models
from vlmflow_worker.errors import FailedPrecondition, InvalidArgument, NotFound, PathOutsideRoots
from vlmflow_worker.models import ModelCache, ModelSpec, load_model, memory_footprint, weights_on_disk
from vlmflow_worker.serve.settings import WorkerSettings


def _logits(model, processor) -> torch.Tensor:
    inputs = processor(text=["<|im_start|>User: hello there<end_of_utterance>\nAssistant:"], return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the text model's attention, with non-zero B so it changes the output."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(tiny_model_path)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_loads_a_local_folder_in_fp32_with_sdpa_in_eval_mode(tiny_model_path: Path) -> None:
    model, processor = load_model(str(tiny_model_path))
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.config._attn_implementation == "sdpa"
    assert not model.training


def test_loads_from_a_model_ref_with_an_explicit_dtype(tiny_model_path: Path, tmp_path: Path) -> None:
    ref = common_pb2.ModelRef(model_id=str(tiny_model_path), dtype=common_pb2.DTYPE_BFLOAT16)
    model, _ = load_model(ref, settings=WorkerSettings(artifact_root=tmp_path))
    assert model.dtype == torch.bfloat16


def test_adapter_is_applied_on_top_of_the_base(tiny_model_path: Path, adapter_dir: Path) -> None:
    base, processor = load_model(tiny_model_path)
    tuned, _ = load_model(ModelSpec(str(tiny_model_path), adapter=str(adapter_dir)))
    assert type(tuned).__name__ == "PeftModel"
    assert not torch.allclose(_logits(base, processor), _logits(tuned, processor))


def test_adapter_uri_is_confined_to_the_roots(tiny_model_path: Path, adapter_dir: Path, tmp_path: Path) -> None:
    ref = common_pb2.ModelRef(model_id=str(tiny_model_path), adapter_uri=str(adapter_dir))
    with pytest.raises(PathOutsideRoots, match="model.adapter_uri"):
        ModelSpec.from_proto(ref, WorkerSettings(artifact_root=tmp_path))
    spec = ModelSpec.from_proto(ref, WorkerSettings(artifact_root=tmp_path, data_roots=[adapter_dir.parent]))
    assert spec.adapter == str(adapter_dir)


def test_pickled_or_missing_adapters_are_refused(tiny_model_path: Path, adapter_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"not really")
    with pytest.raises(InvalidArgument, match="pickled weights are refused"):
        load_model(ModelSpec(str(tiny_model_path), adapter=str(pickled)))
    with pytest.raises(NotFound, match="adapter folder"):
        load_model(ModelSpec(str(tiny_model_path), adapter=str(tmp_path / "nope")))


@pytest.mark.parametrize("quantization", [common_pb2.QUANTIZATION_NF4, common_pb2.QUANTIZATION_INT8])
def test_quantization_is_refused_without_cuda(tiny_model_path: Path, quantization: int, tmp_path: Path) -> None:
    ref = common_pb2.ModelRef(model_id=str(tiny_model_path), quantization=quantization)
    with pytest.raises(FailedPrecondition, match="needs a CUDA GPU"):
        load_model(ref, settings=WorkerSettings(artifact_root=tmp_path), device="cpu")


def test_relative_model_ids_resolve_under_the_artifact_root(tiny_model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "tiny").symlink_to(tiny_model_path)
    spec = ModelSpec.from_proto(common_pb2.ModelRef(model_id="exports/tiny"), WorkerSettings(artifact_root=tmp_path))
    assert spec.model_id == str(tmp_path / "exports" / "tiny")
    assert (
        ModelSpec.from_proto(common_pb2.ModelRef(model_id="org/name"), WorkerSettings(artifact_root=tmp_path)).model_id
        == "org/name"
    )
    # The trainers build a ModelSpec from their config, not from the proto: the same resolution applies.
    settings = WorkerSettings(artifact_root=tmp_path)
    model, _ = load_model(ModelSpec("exports/tiny"), settings=settings)
    assert model.config.model_type == "idefics3"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_loading_on_cuda(tiny_model_path: Path, quantization: str) -> None:
    model, processor = load_model(ModelSpec(str(tiny_model_path), quantization=quantization), device="cuda")
    assert getattr(model, f"is_loaded_in_{'4' if quantization == 'nf4' else '8'}bit")
    assert torch.isfinite(_logits(model, processor).float().cpu()).all()


def test_missing_folders_and_unknown_hub_ids_are_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    started = time.perf_counter()
    with pytest.raises(NotFound, match="model not found locally and the hub is unreachable"):
        load_model("vlmflow-tests/no-such-model")
    assert time.perf_counter() - started < 15, "the offline check must not wait for the hub's retries"


def test_cache_reuses_models_and_evicts_the_least_recently_used(
    tiny_model_path: Path, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ModelSpec(str(tiny_model_path))
    tuned = ModelSpec(str(tiny_model_path), adapter=str(adapter_dir))
    one = memory_footprint(load_model(base)[0])
    cache = ModelCache(max_bytes=int(one * 1.5), device="cpu")
    first, loaded = cache.get(base)
    assert loaded and first.bytes == one
    again, loaded = cache.get(str(tiny_model_path))
    assert not loaded and again is first
    # Room for one model only: loading the tuned variant evicts the base, before the load (on a GPU the two would
    # not fit side by side).
    in_cache_at_load: list[int] = []
    real_load = models.load_model

    def watched_load(*args, **kwargs):
        in_cache_at_load.append(len(cache))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", watched_load)
    _, loaded = cache.get(tuned)
    assert loaded and tuned in cache and base not in cache and len(cache) == 1
    assert in_cache_at_load == [0]
    assert weights_on_disk(base) > 0 and weights_on_disk(ModelSpec("vlmflow-tests/not-cached")) == 0
