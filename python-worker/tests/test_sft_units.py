"""SFT pieces without a worker: adapters and their gradients, the config, checkpoint discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmflow.v1 import jobs_pb2
from vlmflow_worker.errors import InvalidArgument
from vlmflow_worker.train.checkpoints import complete_checkpoints, newest_checkpoint
from vlmflow_worker.train.collator import AnswerOnlyCollator
from vlmflow_worker.train.config import SFTConfig


@pytest.mark.parametrize("use_dora", [False, True])
def test_vision_lora_gets_gradients_under_non_reentrant_checkpointing(
    tiny_model_path: Path, tmp_path: Path, use_dora: bool
) -> None:
    from vlmflow_worker.models import ModelSpec, load_model
    from vlmflow_worker.train.sft import add_adapters

    torch.manual_seed(0)
    model, processor = load_model(ModelSpec(str(tiny_model_path)), device="cpu")
    config = SFTConfig(model_id=str(tiny_model_path), tune_vision=True, use_dora=use_dora, lora_dropout=0.0)
    model = add_adapters(model, config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ],
        "images": ["a.png"],
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**AnswerOnlyCollator(processor, tmp_path, 1024)([row])).loss
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    vision = [n for n in trainable if "vision_model" in n and "lora_" in n]
    text = [n for n in trainable if "text_model" in n and "lora_" in n]
    assert vision and text
    # lora_B starts at zero, so lora_A's first gradient is zero by construction; B's must not be.
    for name in [n for n in vision + text if "lora_B" in n]:
        assert trainable[name].grad is not None and trainable[name].grad.abs().sum() > 0, name
    optimizer.step()
    changed = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert set(changed) >= {n for n in vision + text if "lora_B" in n}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in frozen)
    if use_dora:
        assert any("lora_magnitude_vector" in n for n in trainable)


def test_text_only_lora_does_not_backpropagate_through_the_frozen_vision_tower(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Checkpointing hooks the vision embeddings to require grad; with no vision adapter that only costs a backward
    through the whole tower. Without the hook: the vision tower's output needs no grad, the text LoRA gets the very
    same gradients."""
    from vlmflow_worker.models import ModelSpec, load_model
    from vlmflow_worker.train.sft import add_adapters, frozen_vision_out_of_backward

    Image.new("RGB", (64, 64), "blue").save(tmp_path / "b.png")
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
        ],
        "images": ["b.png"],
    }
    grads, vision_needs_grad = [], []
    for remove in (False, True):
        torch.manual_seed(0)
        model, processor = load_model(ModelSpec(str(tiny_model_path)), device="cpu")
        model = add_adapters(model, SFTConfig(model_id=str(tiny_model_path), lora_dropout=0.0))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # as PEFT and the Trainer do
        model.train()
        if remove:
            assert frozen_vision_out_of_backward(model) >= 1
        vision = next(m for n, m in model.named_modules() if n.endswith("vision_model"))
        vision.register_forward_hook(
            lambda module, a, out: vision_needs_grad.append(out.last_hidden_state.requires_grad)
        )
        model(**AnswerOnlyCollator(processor, tmp_path, 1024)([row])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert vision_needs_grad == [True, False]
    assert grads[0].keys() == grads[1].keys() and all(torch.allclose(grads[0][n], grads[1][n]) for n in grads[0])


def test_config_maps_the_request_unset_means_default_and_zero_means_zero() -> None:
    request = jobs_pb2.TrainRequest(
        lora=jobs_pb2.LoraConfig(r=8, tune_vision=True, dropout=0.0),
        training=jobs_pb2.TrainingConfig(max_steps=50, seed=0, warmup_ratio=0.0, eval_steps=0, save_total_limit=0),
    )
    request.model.model_id = "HuggingFaceTB/SmolVLM-Instruct"
    config = SFTConfig.from_request(request, "/data", "/out")
    assert (config.lora_r, config.lora_alpha, config.tune_vision, config.lora_dropout) == (8, 32, True, 0.0)
    assert (config.max_steps, config.seed, config.learning_rate, config.lr_scheduler) == (50, 0, 1e-4, "cosine")
    assert (config.warmup_ratio, config.eval_steps, config.save_total_limit) == (0.0, 0, 0)
    assert config.gradient_checkpointing and not config.packing  # unset: the defaults
    request.training.gradient_checkpointing = False
    request.training.packing = True
    config = SFTConfig.from_request(request, "/data", "/out")
    assert not config.gradient_checkpointing and config.packing
    assert config.quantization == "none" and config.dtype == "auto"
    assert all(help_text for help_text in SFTConfig.help().values())
    with pytest.raises(InvalidArgument, match="training.warmup_ratio"):
        SFTConfig(warmup_ratio=1.5)


@pytest.mark.parametrize("field, name", [("quantization", "model.quantization"), ("dtype", "model.dtype")])
def test_an_enum_value_the_worker_does_not_know_is_refused_naming_the_field(field: str, name: str) -> None:
    request = jobs_pb2.TrainRequest()
    request.model.model_id = "m"
    setattr(request.model, field, 9)  # a newer client's value: never read as "none" / "auto"
    with pytest.raises(InvalidArgument, match=f"{name} 9 is not a value this worker knows"):
        SFTConfig.from_request(request, "/data", "/out")


def test_newest_checkpoint_is_numeric_and_ignores_half_written_ones(tmp_path: Path) -> None:
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-2", ".tmp-checkpoint-12", "checkpoint-x"):
        (tmp_path / name).mkdir()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert newest_checkpoint(tmp_path).name == "checkpoint-10"
    assert newest_checkpoint(tmp_path / "missing") is None
