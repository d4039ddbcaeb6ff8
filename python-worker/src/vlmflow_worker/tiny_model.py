"""A tiny random-weight Idefics3 model with a real processor, built offline in seconds.

python -m vlmflow_worker.tiny_model --out .state/models/tiny-idefics3

Tests, the offline demo and CPU training use it in place of SmolVLM. It is a real
`Idefics3ForConditionalGeneration` (toy sizes) saved with `save_pretrained`, next to a real `Idefics3Processor`:
a byte-level BPE tokenizer trained here on a small built-in corpus (so any text tokenizes), SmolVLM's special
tokens and SmolVLM-Instruct's chat template, and an `Idefics3ImageProcessor` with small tiles. It loads through
exactly the code path of a hub model (`AutoProcessor`, `AutoModelForImageTextToText`).

Sizes, chosen so a CPU training step takes milliseconds and the vision tower still sees colour and shape:
- tiles of 64 px, patches of 8 px, scale factor 2: 16 image tokens per tile;
- images are resized to a longest edge of 128 px, so an image is at most a 2x2 grid plus the global tile
  (5 tiles, 80 image tokens); `do_image_splitting=False` gives one tile (16 tokens);
- vision: 2 layers, hidden 64; text (Llama): 2 layers, hidden 128, 4 heads (2 KV heads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when the recipe changes: a folder built by an older recipe is rebuilt.
RECIPE_VERSION = 1
RECIPE_FILE = "vlmflow_tiny_model.json"

TILE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (TILE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
LONGEST_EDGE = 2 * TILE_SIZE
VOCAB_SIZE = 2048
SEED = 0

# SmolVLM's special tokens (names and roles as in HuggingFaceTB/SmolVLM-Instruct).
UNK = "<|endoftext|>"
BOS = "<|im_start|>"
PAD = "<|im_end|>"
END_OF_UTTERANCE = "<end_of_utterance>"
FAKE_IMAGE = "<fake_token_around_image>"
IMAGE = "<image>"
GLOBAL_IMAGE = "<global-img>"
GRID_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
SPECIAL_TOKENS = [UNK, BOS, PAD, END_OF_UTTERANCE, FAKE_IMAGE, IMAGE, GLOBAL_IMAGE, *GRID_TOKENS]

# SmolVLM-Instruct's chat template: "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant: ..."
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Built-in corpus for the BPE merges: the words the synthetic tasks, prompts and presets use, so common words are
# one or two tokens; anything else still tokenizes byte by byte.
_CORPUS_WORDS = """
red green blue yellow orange purple pink brown black white gray grey cyan magenta colour color colors
circle circles square squares triangle triangles rectangle star shape shapes dot dots line lines bar bars chart
one two three four five six seven eight nine ten zero eleven twelve how many count number numbers there is are
what which who where when why the a an of in on at to and or with without this that these those it its image
images picture photo photos video videos frame frames first second last left right top bottom middle center
describe description caption short detail details written text read write word words letter letters answer
question user assistant system yes no true false please briefly shown show shows see seen look looks like
person people man woman child dog cat car tree house sky water grass road building table chair food ball
largest smallest biggest tallest more less most least than same different color of the shape in the image
the text in the image says what is written in this image describe this image in one sentence
""".split()


def _corpus() -> list[str]:
    words = _CORPUS_WORDS + [w.capitalize() for w in _CORPUS_WORDS]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [f"{n} {n * 7} {n * 13}" for n in range(200)]
    lines += ["ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,:;!?'\"()-"]
    # With and without a leading space, so every word gets its "Ġword" form as well as its line-start form.
    return (lines + [" " + line for line in lines]) * 4


def build_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, like SmolVLM's) with SmolVLM's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=END_OF_UTTERANCE,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[FAKE_IMAGE, IMAGE, END_OF_UTTERANCE, GLOBAL_IMAGE, *GRID_TOKENS],
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def build_processor(tile_size: int = TILE_SIZE, longest_edge: int = LONGEST_EDGE, image_seq_len: int = IMAGE_SEQ_LEN):
    """The processor; the sizes default to the tiny model's (bench/inference.py passes SmolVLM's real ones)."""
    # The PIL backend is what AutoProcessor picks for Idefics3 with torchvision < 0.27 (LANCZOS resampling);
    # the saved config names "Idefics3ImageProcessor" either way, as on the hub.
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": tile_size},
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        image_seq_len=image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer):
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (BOS, PAD, END_OF_UTTERANCE, IMAGE)}
    config = Idefics3Config(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": TILE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": ids[BOS],
            "eos_token_id": ids[END_OF_UTTERANCE],
            "pad_token_id": ids[PAD],
        },
        scale_factor=SCALE_FACTOR,
        image_token_id=ids[IMAGE],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.eos_token_id = ids[END_OF_UTTERANCE]
    model.generation_config.pad_token_id = ids[PAD]
    return model


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a tiny model built by this recipe version."""
    try:
        recipe = json.loads((folder / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return recipe.get("version") == RECIPE_VERSION and all(
        (folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json")
    )


def build_tiny_model(out_dir: Path) -> Path:
    """Builds the tiny model into `out_dir` (skipped when a complete one is there) and returns its absolute path.

    Written to a temporary sibling folder, then renamed, so a reader never sees a half-written model and two
    concurrent builders do not clash.
    """
    out_dir = Path(out_dir).resolve()
    if is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared
    try:
        processor = build_processor()
        model = build_model(processor.tokenizer)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(
            json.dumps({"version": RECIPE_VERSION, "seed": SEED, "image_seq_len": IMAGE_SEQ_LEN}, indent=2) + "\n"
        )
        if out_dir.exists() and not is_complete(out_dir):
            # An older recipe or a broken folder: move it aside, then drop it.
            stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale.", dir=out_dir.parent))
            os.replace(out_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir):  # another builder won the race with a complete model: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".state/models/tiny-idefics3"), help="Output folder.")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out))


if __name__ == "__main__":
    main()
