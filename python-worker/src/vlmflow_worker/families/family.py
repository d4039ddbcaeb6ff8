"""The Family type: what differs between the model families vlmflow trains (one module per family beside this)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# The projections of a Llama-style decoder: every supported family's text tower has exactly these.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    name: str = field(metadata={"help": "What people call it, for messages: 'Idefics3 (SmolVLM-Instruct)'."})
    model_types: tuple[str, ...] = field(metadata={"help": "config.json `model_type` values of the family."})
    architectures: tuple[str, ...] = field(metadata={"help": "config.json `architectures` class names."})
    processor_class: str = field(metadata={"help": "The AutoProcessor class the family's checkpoints load as."})
    text_tower: str = field(metadata={"help": "Regex of the text tower's module path, e.g. `text_model`."})
    vision_tower: str = field(
        metadata={"help": "Regex of the vision encoder's module path (its blocks, not the projector)."}
    )
    text_targets: tuple[str, ...] = field(metadata={"help": "LoRA targets in the text tower (projection names)."})
    vision_targets: tuple[str, ...] = field(metadata={"help": "LoRA targets in the vision tower (tune_vision)."})
    quantization_skip: tuple[str, ...] = field(
        metadata={
            "help": "Module name prefixes bitsandbytes leaves in full precision (its llm_int8_skip_modules); empty "
            "for transformers' default (the output head and tied weights only)."
        }
    )
    end_of_turn: str = field(metadata={"help": "The token that closes a turn: the last loss token of an answer."})
    video: Literal["native", "keyframes"] = field(
        metadata={
            "help": "'native': the processor takes videos (prep keeps a video row's video, training and Generate "
            "encode it through the video input); 'keyframes': frames go in as images, one tile each."
        }
    )

    def lora_targets(self, modules: Sequence[str], tune_vision: bool) -> str:
        """A regex over module names (PEFT full-matches it): `modules` in the text tower, and with tune_vision the
        vision tower's projections too. A custom `modules` list (not the family's text targets) is used in both
        towers, as the caller asked for those names."""
        towers = [rf".*{self.text_tower}\..*\.({'|'.join(modules)})"]
        if tune_vision:
            vision = self.vision_targets if tuple(modules) == self.text_targets else tuple(modules)
            towers.append(rf".*{self.vision_tower}\..*\.({'|'.join(vision)})")
        return "|".join(f"({t})" for t in towers)
