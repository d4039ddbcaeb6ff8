"""Qwen2.5-VL (3B / 7B / 32B / 72B-Instruct): `Qwen2_5_VLForConditionalGeneration`, model_type "qwen2_5_vl".

Modules (transformers' modeling_qwen2_5_vl.py): `model.language_model.layers.N.{self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj}`, `model.visual.blocks.N.{attn.qkv, attn.proj, mlp.{gate,up,down}_proj}` (the vision
MLP has the text MLP's names, so the targets are always scoped by tower), `model.visual.merger.mlp.{0,2}`
(the projector, inside `visual`), `lm_head`.
"""

from __future__ import annotations

from vlmflow_worker.families.family import LLAMA_PROJECTIONS, Family

FAMILY = Family(
    name="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    architectures=("Qwen2_5_VLForConditionalGeneration",),
    processor_class="Qwen2_5_VLProcessor",
    text_tower="language_model",
    vision_tower=r"visual\.blocks",  # the blocks only: the merger (projector) is not adapted, as in Idefics3
    text_targets=LLAMA_PROJECTIONS,
    vision_targets=("qkv", "proj", "gate_proj", "up_proj", "down_proj"),
    # The vision tower with its merger stays in full precision, and the output head (naming any module replaces
    # transformers' default list).
    quantization_skip=("model.visual", "lm_head"),
    end_of_turn="<|im_end|>",
    video="native",
)
