"""Dataset prep: read what users have (four layouts, local files or the hub), check every row on CPU, write one
normalized dataset with a fixed-seed split and a stats report into the artifact store.

- `readers.py`: sources -> raw records (JSON, JSONL, Parquet, image folder + captions, hub id);
- `rows.py`: one raw record of any layout -> a normalized row, or a drop with its reason;
- `media.py`: images and video frames, loaded, checked and stored content-addressed;
- `job.py`: the PrepareDataset job (validation, fingerprint and cache, token lengths, split, stats).
"""
