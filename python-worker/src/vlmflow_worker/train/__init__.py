"""Training jobs. SFT for now (issue 4); DPO joins in issue 5 with the same plumbing.

- `config.py`: SFTConfig, the typed config with SmolVLM-Instruct defaults, and its mapping from a TrainRequest;
- `collator.py`: Idefics3 batches whose labels carry loss on the assistant answers only;
- `checkpoints.py`: atomic checkpoints and the newest complete one on disk;
- `sft.py`: model + LoRA/DoRA/QLoRA + transformers' Trainer, with job events, cancel and OOM handling;
- `job.py`: the Train (SFT) job entry.
"""
