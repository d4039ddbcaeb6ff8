"""Training jobs: SFT and DPO side by side, on the same checkpoints, launch and resume.

- `config.py`: SFTConfig, the typed config with SmolVLM-Instruct defaults, and its mapping from a TrainRequest;
- `collator.py`: Idefics3 batches whose labels carry loss on the assistant answers only;
- `checkpoints.py`: atomic checkpoints and the newest complete one on disk;
- `sft.py`: model + LoRA/DoRA/QLoRA + transformers' Trainer, with job events, cancel and OOM handling;
- `job.py`: the Train job entry of kind SFT, and the resume point and torchrun launch DPO shares;
- `dpo.py`: the Train job of kind DPO on TRL's DPOTrainer (config, preference collator, trainer, job entry).
"""
