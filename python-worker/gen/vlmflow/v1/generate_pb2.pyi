from vlmflow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_CAPTION: _ClassVar[Task]
    TASK_VQA: _ClassVar[Task]
    TASK_OCR: _ClassVar[Task]
    TASK_MULTI_IMAGE: _ClassVar[Task]
    TASK_VIDEO: _ClassVar[Task]
    TASK_CHAT: _ClassVar[Task]
TASK_UNSPECIFIED: Task
TASK_CAPTION: Task
TASK_VQA: Task
TASK_OCR: Task
TASK_MULTI_IMAGE: Task
TASK_VIDEO: Task
TASK_CHAT: Task

class ChatMessage(_message.Message):
    __slots__ = ("role", "text")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    role: str
    text: str
    def __init__(self, role: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateItem(_message.Message):
    __slots__ = ("id", "task", "prompt", "messages", "images", "video")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    id: str
    task: Task
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    video: _common_pb2.Video
    def __init__(self, id: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., video: _Optional[_Union[_common_pb2.Video, _Mapping]] = ...) -> None: ...

class GenerateResult(_message.Message):
    __slots__ = ("id", "text", "prompt_tokens", "answer_tokens", "generate_seconds", "frame_timestamps")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRAME_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    prompt_tokens: int
    answer_tokens: int
    generate_seconds: float
    frame_timestamps: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., answer_tokens: _Optional[int] = ..., generate_seconds: _Optional[float] = ..., frame_timestamps: _Optional[_Iterable[float]] = ...) -> None: ...

class GenerateTimings(_message.Message):
    __slots__ = ("load_seconds", "preprocess_seconds", "generate_seconds", "total_seconds")
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    load_seconds: float
    preprocess_seconds: float
    generate_seconds: float
    total_seconds: float
    def __init__(self, load_seconds: _Optional[float] = ..., preprocess_seconds: _Optional[float] = ..., generate_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...
