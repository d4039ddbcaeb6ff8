"""Model families: what differs between the vision-language models vlmflow trains, one module per family.

    from vlmflow_worker.families import family_of
    family = family_of(model.config)                    # or config.json as a dict, or family_of_model(folder)
    family.lora_targets(config.target_modules, config.tune_vision)
    family.quantization_skip, family.end_of_turn, family.video

The family is read from the model's config.json (`model_type`, else `architectures`). What every family shares
stays generic elsewhere: the prompt is the processor's chat template, token counts come from the processor
(encoding.py), and the answer-only labels come from one mechanism (train/collator.py) that needs only the family's
end-of-turn token, and the video mode decides how prep stores a video and how Generate and the collator encode it
(encoding.py). Module names are read from transformers' modeling files and checked in tests/test_families.py; each
family trains end to end on its tiny fixture (tests/test_train_families.py, tests/test_video_families.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmflow_worker.errors import InvalidArgument
from vlmflow_worker.families import idefics3, qwen2_5_vl, qwen3_vl, smolvlm2
from vlmflow_worker.families.family import LLAMA_PROJECTIONS, Family

__all__ = ["FAMILIES", "LLAMA_PROJECTIONS", "Family", "family_of", "family_of_model", "family_of_processor"]

FAMILIES: tuple[Family, ...] = (idefics3.FAMILY, smolvlm2.FAMILY, qwen2_5_vl.FAMILY, qwen3_vl.FAMILY)


def family_of(config: Mapping[str, Any] | Any) -> Family:
    """The family of a model from its config: config.json as a dict, or a loaded model's `model.config`.
    InvalidArgument, listing the supported families, for any other model."""
    if isinstance(config, Mapping):
        model_type, architectures = config.get("model_type"), config.get("architectures") or []
    else:
        model_type, architectures = getattr(config, "model_type", None), getattr(config, "architectures", None) or []
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    for family in FAMILIES:
        if any(name in family.architectures for name in architectures):
            return family
    raise InvalidArgument(
        f"model.model_id is a {model_type!r} model ({', '.join(architectures) or 'no architectures named'}), not one "
        f"of the families vlmflow supports: {supported()}; choose a model of one of these"
    )


def family_of_model(source: str | Path, **hub: Any) -> Family:
    """The family of a model folder, or of a hub id (`hub`: revision, local_files_only, as from_pretrained takes
    them): its config.json read as it is, so an unknown model_type gets our error rather than transformers'."""
    from transformers import PreTrainedConfig

    config, _ = PreTrainedConfig.get_config_dict(str(source), **hub)
    return family_of(config)


def family_of_processor(processor: Any) -> Family:
    """The family whose checkpoints load `processor` (the collator has the processor, not the model's config)."""
    name = type(processor).__name__
    for family in FAMILIES:
        if family.processor_class == name:
            return family
    raise InvalidArgument(f"the model's processor is a {name}, not one of the families vlmflow supports: {supported()}")


def supported() -> str:
    return ", ".join(f"{f.name} (model_type {' or '.join(map(repr, f.model_types))})" for f in FAMILIES)
