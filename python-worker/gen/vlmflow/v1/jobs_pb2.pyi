import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from vlmflow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_PREPARE_DATASET: _ClassVar[JobKind]
    JOB_KIND_TRAIN_SFT: _ClassVar[JobKind]
    JOB_KIND_TRAIN_DPO: _ClassVar[JobKind]
    JOB_KIND_EVALUATE: _ClassVar[JobKind]
    JOB_KIND_EXPORT: _ClassVar[JobKind]
    JOB_KIND_TRAIN_GRPO: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_REASON_INVALID_ARGUMENT: _ClassVar[FailureReason]
    FAILURE_REASON_BAD_DATA: _ClassVar[FailureReason]
    FAILURE_REASON_NOT_FOUND: _ClassVar[FailureReason]
    FAILURE_REASON_OUT_OF_MEMORY: _ClassVar[FailureReason]
    FAILURE_REASON_CANCELLED: _ClassVar[FailureReason]
    FAILURE_REASON_STORAGE: _ClassVar[FailureReason]
    FAILURE_REASON_INTERNAL: _ClassVar[FailureReason]
    FAILURE_REASON_FAILED_PRECONDITION: _ClassVar[FailureReason]
    FAILURE_REASON_STUCK: _ClassVar[FailureReason]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARNING: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]

class DatasetLayout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_LAYOUT_UNSPECIFIED: _ClassVar[DatasetLayout]
    DATASET_LAYOUT_AUTO: _ClassVar[DatasetLayout]
    DATASET_LAYOUT_MESSAGES: _ClassVar[DatasetLayout]
    DATASET_LAYOUT_SHAREGPT: _ClassVar[DatasetLayout]
    DATASET_LAYOUT_VQA: _ClassVar[DatasetLayout]
    DATASET_LAYOUT_PREFERENCE: _ClassVar[DatasetLayout]
    DATASET_LAYOUT_IMAGE_FOLDER: _ClassVar[DatasetLayout]

class TrainKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAIN_KIND_UNSPECIFIED: _ClassVar[TrainKind]
    TRAIN_KIND_SFT: _ClassVar[TrainKind]
    TRAIN_KIND_DPO: _ClassVar[TrainKind]
    TRAIN_KIND_GRPO: _ClassVar[TrainKind]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_PREPARE_DATASET: JobKind
JOB_KIND_TRAIN_SFT: JobKind
JOB_KIND_TRAIN_DPO: JobKind
JOB_KIND_EVALUATE: JobKind
JOB_KIND_EXPORT: JobKind
JOB_KIND_TRAIN_GRPO: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_INVALID_ARGUMENT: FailureReason
FAILURE_REASON_BAD_DATA: FailureReason
FAILURE_REASON_NOT_FOUND: FailureReason
FAILURE_REASON_OUT_OF_MEMORY: FailureReason
FAILURE_REASON_CANCELLED: FailureReason
FAILURE_REASON_STORAGE: FailureReason
FAILURE_REASON_INTERNAL: FailureReason
FAILURE_REASON_FAILED_PRECONDITION: FailureReason
FAILURE_REASON_STUCK: FailureReason
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARNING: LogLevel
LOG_LEVEL_ERROR: LogLevel
DATASET_LAYOUT_UNSPECIFIED: DatasetLayout
DATASET_LAYOUT_AUTO: DatasetLayout
DATASET_LAYOUT_MESSAGES: DatasetLayout
DATASET_LAYOUT_SHAREGPT: DatasetLayout
DATASET_LAYOUT_VQA: DatasetLayout
DATASET_LAYOUT_PREFERENCE: DatasetLayout
DATASET_LAYOUT_IMAGE_FOLDER: DatasetLayout
TRAIN_KIND_UNSPECIFIED: TrainKind
TRAIN_KIND_SFT: TrainKind
TRAIN_KIND_DPO: TrainKind
TRAIN_KIND_GRPO: TrainKind

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "time", "accepted", "progress", "checkpoint_saved", "log", "eval", "completed", "failed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    accepted: JobAccepted
    progress: JobProgress
    checkpoint_saved: CheckpointSaved
    log: LogLine
    eval: EvalResult
    completed: JobCompleted
    failed: JobFailed
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accepted: _Optional[_Union[JobAccepted, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., checkpoint_saved: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., eval: _Optional[_Union[EvalResult, _Mapping]] = ..., completed: _Optional[_Union[JobCompleted, _Mapping]] = ..., failed: _Optional[_Union[JobFailed, _Mapping]] = ...) -> None: ...

class JobAccepted(_message.Message):
    __slots__ = ("kind", "attached", "resumed_from_step", "resumed_from_checkpoint_uri")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    kind: JobKind
    attached: bool
    resumed_from_step: int
    resumed_from_checkpoint_uri: str
    def __init__(self, kind: _Optional[_Union[JobKind, str]] = ..., attached: _Optional[bool] = ..., resumed_from_step: _Optional[int] = ..., resumed_from_checkpoint_uri: _Optional[str] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("phase", "step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "samples_per_second", "tokens_per_second", "peak_memory_bytes", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    samples_per_second: float
    tokens_per_second: float
    peak_memory_bytes: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, phase: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., samples_per_second: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CheckpointSaved(_message.Message):
    __slots__ = ("uri", "step")
    URI_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    uri: str
    step: int
    def __init__(self, uri: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("level", "message")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    level: LogLevel
    message: str
    def __init__(self, level: _Optional[_Union[LogLevel, str]] = ..., message: _Optional[str] = ...) -> None: ...

class EvalResult(_message.Message):
    __slots__ = ("step", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    step: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class JobCompleted(_message.Message):
    __slots__ = ("artifacts", "metrics", "cached", "fingerprint")
    class ArtifactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    cached: bool
    fingerprint: str
    def __init__(self, artifacts: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., cached: _Optional[bool] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class JobFailed(_message.Message):
    __slots__ = ("reason", "message", "detail", "last_checkpoint_uri")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    reason: FailureReason
    message: str
    detail: str
    last_checkpoint_uri: str
    def __init__(self, reason: _Optional[_Union[FailureReason, str]] = ..., message: _Optional[str] = ..., detail: _Optional[str] = ..., last_checkpoint_uri: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "create_time", "update_time", "step", "total_steps", "last_checkpoint_uri", "completed", "failed", "watchers")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    state: JobState
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    step: int
    total_steps: int
    last_checkpoint_uri: str
    completed: JobCompleted
    failed: JobFailed
    watchers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., last_checkpoint_uri: _Optional[str] = ..., completed: _Optional[_Union[JobCompleted, _Mapping]] = ..., failed: _Optional[_Union[JobFailed, _Mapping]] = ..., watchers: _Optional[_Iterable[str]] = ...) -> None: ...

class DatasetSource(_message.Message):
    __slots__ = ("uri", "layout", "split", "subset", "columns")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URI_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    layout: DatasetLayout
    split: str
    subset: str
    columns: _containers.ScalarMap[str, str]
    def __init__(self, uri: _Optional[str] = ..., layout: _Optional[_Union[DatasetLayout, str]] = ..., split: _Optional[str] = ..., subset: _Optional[str] = ..., columns: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PrepareDatasetRequest(_message.Message):
    __slots__ = ("job_id", "sources", "model", "max_length", "eval_fraction", "seed", "max_drop_fraction", "max_rows", "output_uri", "watcher")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    EVAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_DROP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    WATCHER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sources: _containers.RepeatedCompositeFieldContainer[DatasetSource]
    model: _common_pb2.ModelRef
    max_length: int
    eval_fraction: float
    seed: int
    max_drop_fraction: float
    max_rows: int
    output_uri: str
    watcher: str
    def __init__(self, job_id: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[DatasetSource, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., max_length: _Optional[int] = ..., eval_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., max_drop_fraction: _Optional[float] = ..., max_rows: _Optional[int] = ..., output_uri: _Optional[str] = ..., watcher: _Optional[str] = ...) -> None: ...

class PrepareDatasetResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...

class LoraConfig(_message.Message):
    __slots__ = ("r", "alpha", "dropout", "target_modules", "use_dora", "tune_vision")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    USE_DORA_FIELD_NUMBER: _ClassVar[int]
    TUNE_VISION_FIELD_NUMBER: _ClassVar[int]
    r: int
    alpha: int
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    use_dora: bool
    tune_vision: bool
    def __init__(self, r: _Optional[int] = ..., alpha: _Optional[int] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., use_dora: _Optional[bool] = ..., tune_vision: _Optional[bool] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("learning_rate", "num_epochs", "max_steps", "micro_batch_size", "gradient_accumulation_steps", "warmup_ratio", "lr_scheduler", "weight_decay", "max_grad_norm", "seed", "gradient_checkpointing", "save_steps", "eval_steps", "logging_steps", "max_length", "save_total_limit", "num_processes", "packing")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    NUM_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SAVE_TOTAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    NUM_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    num_epochs: float
    max_steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    warmup_ratio: float
    lr_scheduler: str
    weight_decay: float
    max_grad_norm: float
    seed: int
    gradient_checkpointing: bool
    save_steps: int
    eval_steps: int
    logging_steps: int
    max_length: int
    save_total_limit: int
    num_processes: int
    packing: bool
    def __init__(self, learning_rate: _Optional[float] = ..., num_epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., micro_batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., warmup_ratio: _Optional[float] = ..., lr_scheduler: _Optional[str] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., seed: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ..., save_steps: _Optional[int] = ..., eval_steps: _Optional[int] = ..., logging_steps: _Optional[int] = ..., max_length: _Optional[int] = ..., save_total_limit: _Optional[int] = ..., num_processes: _Optional[int] = ..., packing: _Optional[bool] = ...) -> None: ...

class DpoConfig(_message.Message):
    __slots__ = ("beta", "loss_type", "max_prompt_length", "max_completion_length")
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    beta: float
    loss_type: str
    max_prompt_length: int
    max_completion_length: int
    def __init__(self, beta: _Optional[float] = ..., loss_type: _Optional[str] = ..., max_prompt_length: _Optional[int] = ..., max_completion_length: _Optional[int] = ...) -> None: ...

class RewardConfig(_message.Message):
    __slots__ = ("kind", "weight", "name", "tag", "relative_tolerance", "absolute_tolerance", "file", "function")
    KIND_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    ABSOLUTE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    weight: float
    name: str
    tag: str
    relative_tolerance: float
    absolute_tolerance: float
    file: str
    function: str
    def __init__(self, kind: _Optional[str] = ..., weight: _Optional[float] = ..., name: _Optional[str] = ..., tag: _Optional[str] = ..., relative_tolerance: _Optional[float] = ..., absolute_tolerance: _Optional[float] = ..., file: _Optional[str] = ..., function: _Optional[str] = ...) -> None: ...

class GrpoConfig(_message.Message):
    __slots__ = ("num_generations", "max_completion_length", "temperature", "top_p", "beta", "loss_type", "importance_sampling_level", "scale_rewards", "epsilon", "epsilon_high", "num_iterations", "mask_truncated_completions", "rewards")
    NUM_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_SAMPLING_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SCALE_REWARDS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_HIGH_FIELD_NUMBER: _ClassVar[int]
    NUM_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MASK_TRUNCATED_COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    num_generations: int
    max_completion_length: int
    temperature: float
    top_p: float
    beta: float
    loss_type: str
    importance_sampling_level: str
    scale_rewards: str
    epsilon: float
    epsilon_high: float
    num_iterations: int
    mask_truncated_completions: bool
    rewards: _containers.RepeatedCompositeFieldContainer[RewardConfig]
    def __init__(self, num_generations: _Optional[int] = ..., max_completion_length: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., beta: _Optional[float] = ..., loss_type: _Optional[str] = ..., importance_sampling_level: _Optional[str] = ..., scale_rewards: _Optional[str] = ..., epsilon: _Optional[float] = ..., epsilon_high: _Optional[float] = ..., num_iterations: _Optional[int] = ..., mask_truncated_completions: _Optional[bool] = ..., rewards: _Optional[_Iterable[_Union[RewardConfig, _Mapping]]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("job_id", "kind", "model", "dataset_uri", "output_uri", "lora", "training", "dpo", "resume_from_checkpoint_uri", "watcher", "tracking", "grpo")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    WATCHER_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    GRPO_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: TrainKind
    model: _common_pb2.ModelRef
    dataset_uri: str
    output_uri: str
    lora: LoraConfig
    training: TrainingConfig
    dpo: DpoConfig
    resume_from_checkpoint_uri: str
    watcher: str
    tracking: TrackingConfig
    grpo: GrpoConfig
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[TrainKind, str]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dataset_uri: _Optional[str] = ..., output_uri: _Optional[str] = ..., lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., training: _Optional[_Union[TrainingConfig, _Mapping]] = ..., dpo: _Optional[_Union[DpoConfig, _Mapping]] = ..., resume_from_checkpoint_uri: _Optional[str] = ..., watcher: _Optional[str] = ..., tracking: _Optional[_Union[TrackingConfig, _Mapping]] = ..., grpo: _Optional[_Union[GrpoConfig, _Mapping]] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...

class EvalVariant(_message.Message):
    __slots__ = ("name", "adapter_uri", "training_log_uri")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_URI_FIELD_NUMBER: _ClassVar[int]
    TRAINING_LOG_URI_FIELD_NUMBER: _ClassVar[int]
    name: str
    adapter_uri: str
    training_log_uri: str
    def __init__(self, name: _Optional[str] = ..., adapter_uri: _Optional[str] = ..., training_log_uri: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("job_id", "model", "variants", "dataset_uri", "metrics", "generation", "batch_size", "max_samples", "bootstrap_samples", "output_uri", "watcher", "tracking")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    WATCHER_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: _common_pb2.ModelRef
    variants: _containers.RepeatedCompositeFieldContainer[EvalVariant]
    dataset_uri: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    generation: _common_pb2.GenerationConfig
    batch_size: int
    max_samples: int
    bootstrap_samples: int
    output_uri: str
    watcher: str
    tracking: TrackingConfig
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., variants: _Optional[_Iterable[_Union[EvalVariant, _Mapping]]] = ..., dataset_uri: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., generation: _Optional[_Union[_common_pb2.GenerationConfig, _Mapping]] = ..., batch_size: _Optional[int] = ..., max_samples: _Optional[int] = ..., bootstrap_samples: _Optional[int] = ..., output_uri: _Optional[str] = ..., watcher: _Optional[str] = ..., tracking: _Optional[_Union[TrackingConfig, _Mapping]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("job_id", "model", "output_uri", "push_to_hub", "private_repo", "card", "watcher", "tracking")
    class CardEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    PUSH_TO_HUB_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_REPO_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    WATCHER_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: _common_pb2.ModelRef
    output_uri: str
    push_to_hub: str
    private_repo: bool
    card: _containers.ScalarMap[str, str]
    watcher: str
    tracking: TrackingConfig
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., output_uri: _Optional[str] = ..., push_to_hub: _Optional[str] = ..., private_repo: _Optional[bool] = ..., card: _Optional[_Mapping[str, str]] = ..., watcher: _Optional[str] = ..., tracking: _Optional[_Union[TrackingConfig, _Mapping]] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...

class TrackingConfig(_message.Message):
    __slots__ = ("run_key", "stage", "mlflow", "wandb")
    RUN_KEY_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_FIELD_NUMBER: _ClassVar[int]
    WANDB_FIELD_NUMBER: _ClassVar[int]
    run_key: str
    stage: str
    mlflow: MlflowConfig
    wandb: WandbConfig
    def __init__(self, run_key: _Optional[str] = ..., stage: _Optional[str] = ..., mlflow: _Optional[_Union[MlflowConfig, _Mapping]] = ..., wandb: _Optional[_Union[WandbConfig, _Mapping]] = ...) -> None: ...

class MlflowConfig(_message.Message):
    __slots__ = ("tracking_uri", "experiment_name", "run_name", "registered_model_name")
    TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    tracking_uri: str
    experiment_name: str
    run_name: str
    registered_model_name: str
    def __init__(self, tracking_uri: _Optional[str] = ..., experiment_name: _Optional[str] = ..., run_name: _Optional[str] = ..., registered_model_name: _Optional[str] = ...) -> None: ...

class WandbConfig(_message.Message):
    __slots__ = ("project", "entity")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    project: str
    entity: str
    def __init__(self, project: _Optional[str] = ..., entity: _Optional[str] = ...) -> None: ...
