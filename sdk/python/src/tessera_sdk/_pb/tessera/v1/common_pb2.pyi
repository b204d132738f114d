import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScopeClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_CLASS_UNSPECIFIED: _ClassVar[ScopeClass]
    SCOPE_CLASS_DISCOVER: _ClassVar[ScopeClass]
    SCOPE_CLASS_READ: _ClassVar[ScopeClass]
    SCOPE_CLASS_WRITE: _ClassVar[ScopeClass]
    SCOPE_CLASS_ADMIN: _ClassVar[ScopeClass]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_ACTIVE: _ClassVar[TaskState]
    TASK_STATE_COMPLETED: _ClassVar[TaskState]
    TASK_STATE_REVOKED: _ClassVar[TaskState]
    TASK_STATE_EXPIRED: _ClassVar[TaskState]

class GrantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_STATE_UNSPECIFIED: _ClassVar[GrantState]
    GRANT_STATE_ACTIVE: _ClassVar[GrantState]
    GRANT_STATE_REVOKED: _ClassVar[GrantState]
    GRANT_STATE_EXPIRED: _ClassVar[GrantState]
SCOPE_CLASS_UNSPECIFIED: ScopeClass
SCOPE_CLASS_DISCOVER: ScopeClass
SCOPE_CLASS_READ: ScopeClass
SCOPE_CLASS_WRITE: ScopeClass
SCOPE_CLASS_ADMIN: ScopeClass
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_ACTIVE: TaskState
TASK_STATE_COMPLETED: TaskState
TASK_STATE_REVOKED: TaskState
TASK_STATE_EXPIRED: TaskState
GRANT_STATE_UNSPECIFIED: GrantState
GRANT_STATE_ACTIVE: GrantState
GRANT_STATE_REVOKED: GrantState
GRANT_STATE_EXPIRED: GrantState

class ScopeSet(_message.Message):
    __slots__ = ("scopes",)
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "orchestrator", "agents", "scope_ceiling", "deadline", "labels", "parent_task_id", "state", "created_at", "ended_at", "live_grants", "authorization_details")
    class ScopeCeilingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScopeSet
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScopeSet, _Mapping]] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ORCHESTRATOR_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_CEILING_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    LIVE_GRANTS_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_DETAILS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    orchestrator: str
    agents: _containers.RepeatedScalarFieldContainer[str]
    scope_ceiling: _containers.MessageMap[str, ScopeSet]
    deadline: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    parent_task_id: str
    state: TaskState
    created_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    live_grants: int
    authorization_details: str
    def __init__(self, task_id: _Optional[str] = ..., orchestrator: _Optional[str] = ..., agents: _Optional[_Iterable[str]] = ..., scope_ceiling: _Optional[_Mapping[str, ScopeSet]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., parent_task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., live_grants: _Optional[int] = ..., authorization_details: _Optional[str] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("grant_id", "task_id", "subject", "audience", "scopes", "issued_at", "expires_at", "parent_grant_id", "state", "revoked_at", "revocation_reason", "key_id", "high_impact", "blast_radius", "approval_id")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CLASS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PARENT_GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HIGH_IMPACT_FIELD_NUMBER: _ClassVar[int]
    BLAST_RADIUS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    task_id: str
    subject: str
    audience: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    parent_grant_id: str
    state: GrantState
    revoked_at: _timestamp_pb2.Timestamp
    revocation_reason: str
    key_id: str
    high_impact: bool
    blast_radius: int
    approval_id: str
    def __init__(self, grant_id: _Optional[str] = ..., task_id: _Optional[str] = ..., subject: _Optional[str] = ..., audience: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parent_grant_id: _Optional[str] = ..., state: _Optional[_Union[GrantState, str]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revocation_reason: _Optional[str] = ..., key_id: _Optional[str] = ..., high_impact: _Optional[bool] = ..., blast_radius: _Optional[int] = ..., approval_id: _Optional[str] = ..., **kwargs) -> None: ...
