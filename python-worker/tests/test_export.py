"""Export: the merged folder loads with plain transformers and answers exactly like base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmflow_worker import export
from vlmflow_worker.errors import FailedPrecondition
from vlmflow_worker.models import ModelSpec


def make_adapter(base: Path, out: Path, use_dora: bool = False) -> Path:
    """A LoRA adapter with random (not no-op) weights on the text and vision attention projections."""
    from peft import LoraConfig, get_peft_model

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
        use_dora=use_dora,
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make the update big enough to change greedy answers
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    peft_model.save_pretrained(out)
    dataset = out.parent / "dataset"
    dataset.mkdir(exist_ok=True)
    (dataset / "dataset.json").write_text(json.dumps({"kind": "sft", "fingerprint": "abc123"}))
    settings = {"dataset_dir": str(dataset), "learning_rate": 2e-4}  # as the trainers write it
    (out / "training_config.json").write_text(json.dumps(settings))
    return out


def prompts(processor):
    colours = [(220, 30, 30), (30, 170, 50), (30, 60, 220)]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return [processor(text=[text], images=[[Image.new("RGB", (64, 64), c)]], return_tensors="pt") for c in colours]


def greedy(model, inputs_list) -> list[list[int]]:
    with torch.no_grad():
        return [model.generate(**x, max_new_tokens=8, do_sample=False)[0].tolist() for x in inputs_list]


@pytest.mark.parametrize("use_dora", [False, True])
def test_merged_model_answers_like_base_plus_adapter(tiny_model_path, tmp_path, use_dora):
    from peft import PeftModel

    adapter = make_adapter(tiny_model_path, tmp_path / "adapter", use_dora)
    spec = ModelSpec(str(tiny_model_path), adapter=str(adapter))
    eval_metrics = tmp_path / "metrics.json"
    accuracy = {"base": {"value": 0.25, "low": 0.1, "high": 0.4}, "sft": {"value": 0.9, "low": 0.8, "high": 1.0}}
    summary = {"variants": ["base", "sft"], "metrics": {v: {"vqa_accuracy": accuracy[v]} for v in accuracy}}
    eval_metrics.write_text(json.dumps(summary))
    out = export.export(spec, tmp_path / "merged", {"name": "shapes"}, eval_metrics)

    # Plain transformers, no PEFT: safetensors weights, a processor, a card.
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    merged = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    processor = AutoProcessor.from_pretrained(out)
    card = (out / "README.md").read_text()
    assert "base_model:" in card and "abc123" in card and "| vqa_accuracy | 0.25" in card
    assert f'"use_dora": {str(use_dora).lower()}' in card

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    inputs = prompts(processor)
    base_answers = greedy(base, inputs)
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    adapter_answers = greedy(with_adapter, inputs)
    assert greedy(merged, inputs) == adapter_answers
    # The adapter really changes the answers, so the equality above says something.
    assert adapter_answers != base_answers


def test_qlora_adapters_merge_into_a_bf16_reload():
    spec = ModelSpec("some/model", quantization="nf4", adapter="/a")
    merged = export.merge_spec(spec)
    assert (merged.quantization, merged.dtype) == ("none", "bfloat16")
    assert export.merge_spec(ModelSpec("m", adapter="/a")).dtype == "auto"


def test_push_without_token_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(FailedPrecondition, match="no Hugging Face token"):
        export.push_to_hub(tmp_path, "org/name", private=True)
