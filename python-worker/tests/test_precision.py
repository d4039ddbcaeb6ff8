"""The precision decision (precision.py), over every combination of asked dtype, device, quantization and use."""

from __future__ import annotations

import itertools

import pytest

from vlmflow_worker.errors import FailedPrecondition
from vlmflow_worker.precision import Precision, decide

BF16_GPU, OLD_GPU, CPU = ("cuda", True), ("cuda", False), ("cpu", False)
REFUSED = "refused for training"

# (asked, device) -> (load dtype, trainer bf16, trainer fp16), or REFUSED when training (loading still allowed).
TABLE: dict[tuple[str, tuple[str, bool]], tuple[str, bool, bool] | str] = {
    ("auto", BF16_GPU): ("bfloat16", True, False),
    ("auto", OLD_GPU): ("float16", False, True),  # T4 / V100: fp16 with loss scaling
    ("auto", CPU): ("float32", False, False),
    ("bfloat16", BF16_GPU): ("bfloat16", True, False),
    ("bfloat16", OLD_GPU): REFUSED,
    ("bfloat16", CPU): ("bfloat16", False, False),
    ("float16", BF16_GPU): ("float16", False, True),
    ("float16", OLD_GPU): ("float16", False, True),
    ("float16", CPU): REFUSED,
    ("float32", BF16_GPU): ("float32", False, False),
    ("float32", OLD_GPU): ("float32", False, False),
    ("float32", CPU): ("float32", False, False),
}
# What loading (inference, export) gets where training is refused.
LOADS_WHERE_TRAINING_IS_REFUSED = {("bfloat16", OLD_GPU): "bfloat16", ("float16", CPU): "float16"}


def test_the_table_covers_every_asked_dtype_and_device() -> None:
    from vlmflow_worker.models import DTYPES

    assert set(TABLE) == set(itertools.product(DTYPES, (BF16_GPU, OLD_GPU, CPU)))


@pytest.mark.parametrize("training", [False, True], ids=["load", "train"])
@pytest.mark.parametrize("quantization", ["none", "nf4", "int8"])
@pytest.mark.parametrize(("asked", "device"), list(TABLE), ids=[f"{a}-{d[0]}-bf16={d[1]}" for a, d in TABLE])
def test_decision(asked: str, device: tuple[str, bool], quantization: str, training: bool) -> None:
    kind, bf16_supported = device
    expected = TABLE[(asked, device)]
    if expected == REFUSED and training:
        with pytest.raises(FailedPrecondition, match="model.dtype"):
            decide(asked, kind, bf16_supported, quantization, training=True)
        return
    got = decide(asked, kind, bf16_supported, quantization, training)
    if expected == REFUSED:
        load, bf16, fp16 = LOADS_WHERE_TRAINING_IS_REFUSED[(asked, device)], False, False
    else:
        assert isinstance(expected, tuple)
        load, bf16, fp16 = expected
    # The 4-bit layers compute in the load dtype; only nf4 has a compute dtype.
    compute = load if quantization == "nf4" else None
    assert got == Precision(load, bf16=bf16, fp16=fp16, compute_dtype_4bit=compute)
    # Loading and training load the same dtype, so a trainer gets the model its flags were chosen for.
    if training:
        assert got.load_dtype == decide(asked, kind, bf16_supported, quantization).load_dtype


def test_refusals_say_what_to_set() -> None:
    with pytest.raises(FailedPrecondition, match=r"model.dtype bfloat16 .*compute capability 8.0.*auto"):
        decide("bfloat16", "cuda", bf16_supported=False, training=True)
    with pytest.raises(FailedPrecondition, match=r"model.dtype float16 .*CUDA GPU.*on CPU use auto"):
        decide("float16", "cpu", bf16_supported=False, training=True)


def test_device_strings_with_an_index_are_cuda() -> None:
    assert decide("auto", "cuda:3", bf16_supported=True).load_dtype == "bfloat16"
