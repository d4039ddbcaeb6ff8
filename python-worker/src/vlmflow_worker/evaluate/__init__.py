"""Evaluation of base against tuned models.

- `job.py`: the Evaluate job (generation and answer log-probs per variant, the metrics table, samples);
- `metrics.py`: VQA accuracy, relaxed accuracy, ANLS, CER/WER, BLEU-4, ROUGE-L, CIDEr-D, preference metrics;
- `report.py`: the HTML report (metrics side by side, loss curves, sample predictions beside their images).
"""
