"""Inference: the model cache and batched generation (`generate.py`), the task prompts (`prompts.py`) and the
people's command line (`python -m vlmflow_worker.infer.cli`)."""
