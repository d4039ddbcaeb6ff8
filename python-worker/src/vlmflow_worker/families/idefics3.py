"""Idefics3: SmolVLM-Instruct (and SmolVLM-256M/500M-Instruct), `Idefics3ForConditionalGeneration`.

Modules (transformers' modeling_idefics3.py): `model.text_model.layers.N.{self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj}` (a Llama decoder), `model.vision_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj,
mlp.fc1, mlp.fc2}` (SigLIP), `model.connector.modality_projection.proj`, `lm_head`.
"""

from __future__ import annotations

from vlmflow_worker.families.family import LLAMA_PROJECTIONS, Family

FAMILY = Family(
    name="Idefics3 (SmolVLM-Instruct)",
    model_types=("idefics3",),
    architectures=("Idefics3ForConditionalGeneration",),
    processor_class="Idefics3Processor",
    text_tower="text_model",
    vision_tower="vision_model",
    text_targets=LLAMA_PROJECTIONS,
    vision_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    # transformers' default, as before the family layer: only the output head stays in full precision, the vision
    # tower and connector are quantized too. Leaving them out would change QLoRA's memory and quality on SmolVLM;
    # that wants a measurement on a GPU first (the other families skip them, as they were published to run).
    quantization_skip=(),
    end_of_turn="<end_of_utterance>",
    video="keyframes",  # no video input: frames are images, one tile each (encoding.py)
)
