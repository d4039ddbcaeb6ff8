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
    # The vision tower and connector stay in full precision, as in SmolVLM2 (the same towers): 4-bit SigLIP weights
    # blur every image feature the text model reads, and they are small (SmolVLM-Instruct's SigLIP is 0.43B
    # parameters: about 0.6 GB more than in nf4). lm_head too, transformers' own default.
    quantization_skip=("model.vision_model", "model.connector", "lm_head"),
    end_of_turn="<end_of_utterance>",
    video="keyframes",  # no video input: frames are images, one tile each (encoding.py)
)
