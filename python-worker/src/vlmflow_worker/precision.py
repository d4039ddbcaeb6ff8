"""One precision decision for loading, training and 4-bit compute, from what was asked and what the device can do.

    from vlmflow_worker.precision import decide, for_device
    decide("auto", "cuda", bf16_supported=False, quantization="nf4", training=True)
    # Precision(load_dtype='float16', bf16=False, fp16=True, compute_dtype_4bit='float16')

| asked    | CUDA, bf16 (sm >= 8.0)           | CUDA, no bf16 (T4, V100)          | CPU                            |
|----------|----------------------------------|-----------------------------------|--------------------------------|
| auto     | bf16 weights, bf16 AMP           | fp16 weights, fp16 AMP + scaling  | fp32                           |
| bfloat16 | bf16 weights, bf16 AMP           | training refused; loading allowed | bf16 weights, no AMP           |
| float16  | fp16 weights, fp16 AMP + scaling | fp16 weights, fp16 AMP + scaling  | loading only; training refused |
| float32  | fp32, no AMP                     | fp32, no AMP                      | fp32                           |

Why fp16 weights can train with loss scaling: every run trains LoRA adapters, and PEFT keeps adapter weights in fp32
(`autocast_adapter_dtype`), so the trainable (master) weights are fp32 while the frozen base stays half size; the
trainer's GradScaler (TrainingArguments fp16=True) scales the loss so fp16 gradients do not underflow. bf16 has
fp32's range, so it needs no scaling. The nf4 compute dtype is the load dtype (the half type the trainer autocasts to).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmflow_worker.errors import FailedPrecondition


@dataclass(frozen=True)
class Precision:
    load_dtype: str  # the dtype weights load in: float32, bfloat16 or float16 (torch attribute names)
    bf16: bool  # TrainingArguments.bf16: bf16 autocast
    fp16: bool  # TrainingArguments.fp16: fp16 autocast with the trainer's GradScaler (loss scaling)
    compute_dtype_4bit: str | None  # bitsandbytes bnb_4bit_compute_dtype with nf4 quantization, else None


def decide(
    requested: str, device: str, bf16_supported: bool, quantization: str = "none", training: bool = False
) -> Precision:
    """The precision for `requested` (model.dtype: auto, float32, bfloat16, float16) on `device` ("cuda" or "cpu").

    Raises FailedPrecondition naming model.dtype for training the device cannot do well: bf16 on a GPU without it
    (emulated, many times slower), fp16 on CPU (no loss scaling there). Loading for inference or export is never
    refused: a bf16 checkpoint on a T4 still loads and runs, only slower. With nf4 quantization the 4-bit layers
    compute in the type the rest of the model runs in, so the trainer's autocast and bitsandbytes agree.
    """
    on_gpu = device.startswith("cuda")
    if not on_gpu:
        if training and requested == "float16":
            raise FailedPrecondition(
                "model.dtype float16 trains with loss scaling on a CUDA GPU only; on CPU use auto (float32) or "
                "bfloat16, or send the job to a GPU worker"
            )
        load = "float32" if requested == "auto" else requested
        return Precision(load, bf16=False, fp16=False, compute_dtype_4bit=_compute_4bit(quantization, load))
    if requested == "bfloat16" and not bf16_supported and training:
        raise FailedPrecondition(
            "model.dtype bfloat16 needs a GPU with bf16 (compute capability 8.0 or newer) to train, and this one has "
            "none; set model.dtype to auto (fp16 with loss scaling here) or float16, or send the job to an Ampere "
            "or newer GPU"
        )
    if requested == "float32":
        return Precision("float32", bf16=False, fp16=False, compute_dtype_4bit=_compute_4bit(quantization, "float32"))
    half = requested if requested != "auto" else ("bfloat16" if bf16_supported else "float16")
    # bf16 weights on a GPU without bf16 only load (training was refused above): no bf16 autocast for them.
    bf16 = half == "bfloat16" and bf16_supported
    return Precision(half, bf16=bf16, fp16=half == "float16", compute_dtype_4bit=_compute_4bit(quantization, half))


def _compute_4bit(quantization: str, dtype: str) -> str | None:
    return dtype if quantization == "nf4" else None


def bf16_supported(device: str) -> bool:
    """Native bf16 on this CUDA device: compute capability 8.0 or newer (Ampere on). Not
    torch.cuda.is_bf16_supported(), which also says yes for the emulated bf16 of older GPUs (T4, V100)."""
    if not device.startswith("cuda"):
        return False
    import torch

    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def for_device(requested: str, device: str, quantization: str = "none", training: bool = False) -> Precision:
    """decide() for a torch device string ("cuda:1", "cpu"), probing the GPU's bf16 support."""
    return decide(requested, device, bf16_supported(device), quantization, training)
