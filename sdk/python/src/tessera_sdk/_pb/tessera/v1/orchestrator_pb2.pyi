import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartTaskRequest(_message.Message):
    __slots__ = ("task_id", "agents", "scope_ceiling", "deadline", "duration_seconds", "labels", "parent_task_id", "authorization_details")
    class ScopeCeilingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.ScopeSet
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.ScopeSet, _Mapping]] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_CEILING_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_DETAILS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    agents: _containers.RepeatedScalarFieldContainer[str]
    scope_ceiling: _containers.MessageMap[str, _common_pb2.ScopeSet]
    deadline: _timestamp_pb2.Timestamp
    duration_seconds: int
    labels: _containers.ScalarMap[str, str]
    parent_task_id: str
    authorization_details: str
    def __init__(self, task_id: _Optional[str] = ..., agents: _Optional[_Iterable[str]] = ..., scope_ceiling: _Optional[_Mapping[str, _common_pb2.ScopeSet]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., parent_task_id: _Optional[str] = ..., authorization_details: _Optional[str] = ...) -> None: ...

class CompleteTaskRequest(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CompleteTaskResponse(_message.Message):
    __slots__ = ("task", "grants_revoked", "child_tasks_ended")
    TASK_FIELD_NUMBER: _ClassVar[int]
    GRANTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    CHILD_TASKS_ENDED_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    grants_revoked: int
    child_tasks_ended: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., grants_revoked: _Optional[int] = ..., child_tasks_ended: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...
