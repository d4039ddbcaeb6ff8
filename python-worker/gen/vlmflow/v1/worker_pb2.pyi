from vlmflow.v1 import common_pb2 as _common_pb2
from vlmflow.v1 import generate_pb2 as _generate_pb2
from vlmflow.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("index", "name", "total_memory_bytes", "free_memory_bytes", "job_id", "inference")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int
    job_id: str
    inference: bool
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., total_memory_bytes: _Optional[int] = ..., free_memory_bytes: _Optional[int] = ..., job_id: _Optional[str] = ..., inference: _Optional[bool] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("device", "gpus", "versions", "job_capacity", "jobs_running", "worker_id", "artifact_root")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    JOB_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    JOBS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ROOT_FIELD_NUMBER: _ClassVar[int]
    device: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    versions: _containers.ScalarMap[str, str]
    job_capacity: int
    jobs_running: int
    worker_id: str
    artifact_root: str
    def __init__(self, device: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., versions: _Optional[_Mapping[str, str]] = ..., job_capacity: _Optional[int] = ..., jobs_running: _Optional[int] = ..., worker_id: _Optional[str] = ..., artifact_root: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _jobs_pb2.JobEvent
    def __init__(self, event: _Optional[_Union[_jobs_pb2.JobEvent, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "wait", "reason", "watcher")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WATCHER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    wait: bool
    reason: str
    watcher: str
    def __init__(self, job_id: _Optional[str] = ..., wait: _Optional[bool] = ..., reason: _Optional[str] = ..., watcher: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _jobs_pb2.Job
    def __init__(self, job: _Optional[_Union[_jobs_pb2.Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _jobs_pb2.Job
    def __init__(self, job: _Optional[_Union[_jobs_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "kind")
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    state: _jobs_pb2.JobState
    kind: _jobs_pb2.JobKind
    def __init__(self, state: _Optional[_Union[_jobs_pb2.JobState, str]] = ..., kind: _Optional[_Union[_jobs_pb2.JobKind, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_jobs_pb2.Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_jobs_pb2.Job, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "items", "generation", "batch_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    items: _containers.RepeatedCompositeFieldContainer[_generate_pb2.GenerateItem]
    generation: _common_pb2.GenerationConfig
    batch_size: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., items: _Optional[_Iterable[_Union[_generate_pb2.GenerateItem, _Mapping]]] = ..., generation: _Optional[_Union[_common_pb2.GenerationConfig, _Mapping]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("results", "timings")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_generate_pb2.GenerateResult]
    timings: _generate_pb2.GenerateTimings
    def __init__(self, results: _Optional[_Iterable[_Union[_generate_pb2.GenerateResult, _Mapping]]] = ..., timings: _Optional[_Union[_generate_pb2.GenerateTimings, _Mapping]] = ...) -> None: ...
