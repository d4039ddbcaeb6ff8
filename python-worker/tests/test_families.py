"""The model-family layer (families/): a model's family from its config.json, a clear refusal of other models, and
each family's LoRA targets and quantization skips checked against the real module names of a toy-sized model of
that family (transformers' own classes, built on the meta device: names only, no weights, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlmflow_worker.errors import InvalidArgument
from vlmflow_worker.families import (
    FAMILIES,
    family_of,
    family_of_model,
    family_of_processor,
    idefics3,
    qwen2_5_vl,
    qwen3_vl,
    smolvlm2,
)

TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128}  # fmt: skip
SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 16}  # fmt: skip
QWEN_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32}


def toy_config(family_module):
    from transformers import Idefics3Config, Qwen2_5_VLConfig, Qwen3VLConfig, SmolVLMConfig

    text_llama = {**TEXT, "model_type": "llama"}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    return {
        idefics3: lambda: Idefics3Config(text_config=text_llama, vision_config=SIGLIP),
        smolvlm2: lambda: SmolVLMConfig(text_config=text_llama, vision_config=SIGLIP),
        qwen2_5_vl: lambda: Qwen2_5_VLConfig(
            text_config={**TEXT, "rope_parameters": rope}, vision_config={**QWEN_VISION, "fullatt_block_indexes": [1]}
        ),
        qwen3_vl: lambda: Qwen3VLConfig(
            text_config={**TEXT, "head_dim": 8, "rope_parameters": {**rope, "mrope_section": [2, 1, 1]}},
            vision_config={**QWEN_VISION, "deepstack_visual_indexes": [0]},
        ),
    }[family_module]()


# Where each family keeps its text decoder, its vision encoder blocks and its projector (connector / merger).
LAYOUT = {
    idefics3: ("model.text_model.", "model.vision_model.", "model.connector."),
    smolvlm2: ("model.text_model.", "model.vision_model.", "model.connector."),
    qwen2_5_vl: ("model.language_model.", "model.visual.blocks.", "model.visual.merger."),
    qwen3_vl: ("model.language_model.", "model.visual.blocks.", "model.visual.merger."),
}


@pytest.mark.parametrize("module", [idefics3, smolvlm2, qwen2_5_vl, qwen3_vl], ids=lambda m: m.__name__.split(".")[-1])
def test_each_familys_targets_and_skips_name_its_real_modules(module) -> None:
    import re

    from transformers import AutoModelForImageTextToText
    from transformers.quantizers.quantizers_utils import should_convert_module

    config = toy_config(module)
    family = module.FAMILY
    assert family_of(config) is family
    assert family_of(config.to_dict()) is family
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert type(model).__name__ in family.architectures
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    text_tower, vision_tower, projector = LAYOUT[module]

    text_only = family.lora_targets(family.text_targets, tune_vision=False)
    adapted = [name for name in linears if re.fullmatch(text_only, name)]
    # Every attention and MLP projection of every decoder layer, and nothing outside the decoder.
    assert len(adapted) == 7 * TEXT["num_hidden_layers"]
    assert all(name.startswith(text_tower) for name in adapted)

    both = family.lora_targets(family.text_targets, tune_vision=True)
    vision = [name for name in linears if re.fullmatch(both, name) and not name.startswith(text_tower)]
    blocks = [name for name in linears if name.startswith(vision_tower) and "merger" not in name]
    assert sorted(vision) == sorted(blocks), "tune_vision adapts every vision block projection, not the projector"

    if family.quantization_skip:
        kept = [name for name in linears if not should_convert_module(name, list(family.quantization_skip))]
        expected = [n for n in linears if n.startswith((vision_tower, projector, "model.visual.")) or n == "lm_head"]
        assert sorted(kept) == sorted(expected), "the vision tower, projector and head stay in full precision"
        assert not any(name.startswith(text_tower) for name in kept)


def test_idefics3_targets_are_the_regex_training_used_before_the_family_layer() -> None:
    family = idefics3.FAMILY
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert family.lora_targets(projections, tune_vision=False) == (
        r"(.*text_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj))"
    )
    assert family.lora_targets(projections, tune_vision=True).endswith(
        r"|(.*vision_model\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2))"
    )
    # Names the caller chose are looked for in both towers.
    assert (
        family.lora_targets(["q_proj"], tune_vision=True)
        == r"(.*text_model\..*\.(q_proj))|(.*vision_model\..*\.(q_proj))"
    )


def test_the_family_is_read_from_config_json(tiny_model_path: Path) -> None:
    from transformers import AutoProcessor

    assert family_of_model(tiny_model_path) is idefics3.FAMILY
    assert family_of_processor(AutoProcessor.from_pretrained(tiny_model_path)) is idefics3.FAMILY
    # A config naming only the architecture is enough.
    assert family_of({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}) is qwen2_5_vl.FAMILY


def test_another_model_is_refused_with_the_supported_families(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}')
    with pytest.raises(InvalidArgument, match="'llava' model") as err:
        family_of_model(tmp_path)
    for family in FAMILIES:
        assert family.name in err.value.message
    assert "'qwen3_vl'" in err.value.message
