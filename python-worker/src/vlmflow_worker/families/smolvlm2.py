"""SmolVLM2 (256M / 500M / 2.2B-Video-Instruct): `SmolVLMForConditionalGeneration`, model_type "smolvlm".

The Idefics3 layout under new class names (transformers' modeling_smolvlm.py): `model.text_model` (a Llama
decoder), `model.vision_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, mlp.fc1, mlp.fc2}`,
`model.connector.modality_projection.proj`, `lm_head`; the processor takes videos itself.
"""

from __future__ import annotations

from vlmflow_worker.families.family import LLAMA_PROJECTIONS, Family

FAMILY = Family(
    name="SmolVLM2",
    model_types=("smolvlm",),
    architectures=("SmolVLMForConditionalGeneration",),
    processor_class="SmolVLMProcessor",
    text_tower="text_model",
    vision_tower="vision_model",
    text_targets=LLAMA_PROJECTIONS,
    vision_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    # The vision tower and connector stay in full precision, and the output head (naming any module replaces
    # transformers' default list, so lm_head is named too).
    quantization_skip=("model.vision_model", "model.connector", "lm_head"),
    end_of_turn="<end_of_utterance>",
    video="native",
)
