"""Training jobs: SFT, DPO and GRPO side by side, on the same checkpoints, launch and resume.

- `config.py`: SFTConfig, the typed config with SmolVLM-Instruct defaults, and its mapping from a TrainRequest;
- `collator.py`: Idefics3 batches whose labels carry loss on the assistant answers only;
- `checkpoints.py`: atomic checkpoints and the newest complete one on disk;
- `sft.py`: model + LoRA/DoRA/QLoRA + transformers' Trainer, with job events, cancel and OOM handling;
- `job.py`: the Train job entry of kind SFT, and the resume point and torchrun launch DPO shares;
- `dpo.py`: the Train job of kind DPO on TRL's DPOTrainer (config, preference collator, trainer, job entry);
- `grpo.py`: the Train job of kind GRPO on TRL's GRPOTrainer (config, prompt rows, trainer, job entry);
- `rewards.py`: GRPO's verifiable rewards as configuration (accuracy kinds, format, custom, weighted sums).
"""
