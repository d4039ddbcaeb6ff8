"""Long jobs (dataset prep, training, evaluation, export) run in child processes of the worker.

- `kinds.py`: the table JobKind -> entry module; DPO, GRPO, Evaluate and Export included.
- `spec.py`: what an entry module exports (`JOB = JobSpec(...)`) and the result it returns.
- `context.py`: the handle an entry uses inside the child to stream events and notice cancellation.
- `eventlog.py`: the JSONL event log under `<artifact_root>/jobs/<job_id>/` and the state it implies.
- `registry.py`: the server side: start or attach by job id, supervise the child, watch, cancel, stuck jobs;
- `lease.py`: one owner per job across hosts sharing the artifact store (a lease file in the job folder).
- `child.py`: `python -m vlmflow_worker.jobs.child <job_dir>`, the child process itself.
"""
