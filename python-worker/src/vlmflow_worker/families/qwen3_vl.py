"""Qwen3-VL (2B / 4B / 8B / 32B, Instruct and Thinking): `Qwen3VLForConditionalGeneration`, model_type "qwen3_vl".

Modules (transformers' modeling_qwen3_vl.py): `model.language_model.layers.N.{self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj}`, `model.visual.blocks.N.{attn.qkv, attn.proj, mlp.linear_fc1, mlp.linear_fc2}`, the
projectors `model.visual.merger.linear_fc{1,2}` and `model.visual.deepstack_merger_list.N.linear_fc{1,2}` (they
share the block MLP's names, so the vision targets are scoped to the blocks), `lm_head`. The MoE variant
(`qwen3_vl_moe`) is another family.
"""

from __future__ import annotations

from vlmflow_worker.families.family import LLAMA_PROJECTIONS, Family

FAMILY = Family(
    name="Qwen3-VL",
    model_types=("qwen3_vl",),
    architectures=("Qwen3VLForConditionalGeneration",),
    processor_class="Qwen3VLProcessor",
    text_tower="language_model",
    vision_tower=r"visual\.blocks",  # the blocks only: the mergers (projectors) are not adapted, as in Idefics3
    text_targets=LLAMA_PROJECTIONS,
    vision_targets=("qkv", "proj", "linear_fc1", "linear_fc2"),
    # The vision tower with its mergers stays in full precision, and the output head (naming any module replaces
    # transformers' default list).
    quantization_skip=("model.visual", "lm_head"),
    end_of_turn="<|im_end|>",
    video="native",
)
