import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_PENDING: _ClassVar[ApprovalState]
    APPROVAL_STATE_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_STATE_DENIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_REDEEMED: _ClassVar[ApprovalState]
    APPROVAL_STATE_EXPIRED: _ClassVar[ApprovalState]
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_STATE_PENDING: ApprovalState
APPROVAL_STATE_APPROVED: ApprovalState
APPROVAL_STATE_DENIED: ApprovalState
APPROVAL_STATE_REDEEMED: ApprovalState
APPROVAL_STATE_EXPIRED: ApprovalState

class ListGrantsRequest(_message.Message):
    __slots__ = ("task_id", "subject", "owner", "audience", "high_impact_only", "expiring_before", "page_size", "page_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    CLASS_FIELD_NUMBER: _ClassVar[int]
    HIGH_IMPACT_ONLY_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    subject: str
    owner: str
    audience: str
    high_impact_only: bool
    expiring_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, task_id: _Optional[str] = ..., subject: _Optional[str] = ..., owner: _Optional[str] = ..., audience: _Optional[str] = ..., high_impact_only: _Optional[bool] = ..., expiring_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., **kwargs) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants", "next_page_token")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[_common_pb2.Grant]
    next_page_token: str
    def __init__(self, grants: _Optional[_Iterable[_Union[_common_pb2.Grant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeGrantRequest(_message.Message):
    __slots__ = ("grant_id", "reason")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    reason: str
    def __init__(self, grant_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeGrantResponse(_message.Message):
    __slots__ = ("grant_id", "revoked")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    revoked: bool
    def __init__(self, grant_id: _Optional[str] = ..., revoked: _Optional[bool] = ...) -> None: ...

class RevokeTaskRequest(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeTaskResponse(_message.Message):
    __slots__ = ("task", "grants_revoked", "child_tasks_ended")
    TASK_FIELD_NUMBER: _ClassVar[int]
    GRANTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    CHILD_TASKS_ENDED_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    grants_revoked: int
    child_tasks_ended: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., grants_revoked: _Optional[int] = ..., child_tasks_ended: _Optional[_Iterable[str]] = ...) -> None: ...

class RevokeIdentityRequest(_message.Message):
    __slots__ = ("identity", "reason", "disable")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DISABLE_FIELD_NUMBER: _ClassVar[int]
    identity: str
    reason: str
    disable: bool
    def __init__(self, identity: _Optional[str] = ..., reason: _Optional[str] = ..., disable: _Optional[bool] = ...) -> None: ...

class RevokeIdentityResponse(_message.Message):
    __slots__ = ("grants_revoked", "disabled")
    GRANTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    grants_revoked: int
    disabled: bool
    def __init__(self, grants_revoked: _Optional[int] = ..., disabled: _Optional[bool] = ...) -> None: ...

class EnableIdentityRequest(_message.Message):
    __slots__ = ("identity", "reason")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    identity: str
    reason: str
    def __init__(self, identity: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EnableIdentityResponse(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class RevokeAllRequest(_message.Message):
    __slots__ = ("confirm", "reason")
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    confirm: str
    reason: str
    def __init__(self, confirm: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeAllResponse(_message.Message):
    __slots__ = ("grants_revoked", "new_key_id")
    GRANTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    NEW_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    grants_revoked: int
    new_key_id: str
    def __init__(self, grants_revoked: _Optional[int] = ..., new_key_id: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approval_id", "requester", "task_id", "audience", "scopes", "ttl_seconds", "created_at", "expires_at", "reason", "state", "request_hash", "blast_radius", "high_impact_scopes", "decided_by", "decision_reason", "decided_at", "ttl_defaulted")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CLASS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HASH_FIELD_NUMBER: _ClassVar[int]
    BLAST_RADIUS_FIELD_NUMBER: _ClassVar[int]
    HIGH_IMPACT_SCOPES_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_DEFAULTED_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    requester: str
    task_id: str
    audience: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    state: ApprovalState
    request_hash: str
    blast_radius: int
    high_impact_scopes: _containers.RepeatedScalarFieldContainer[str]
    decided_by: str
    decision_reason: str
    decided_at: _timestamp_pb2.Timestamp
    ttl_defaulted: bool
    def __init__(self, approval_id: _Optional[str] = ..., requester: _Optional[str] = ..., task_id: _Optional[str] = ..., audience: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., state: _Optional[_Union[ApprovalState, str]] = ..., request_hash: _Optional[str] = ..., blast_radius: _Optional[int] = ..., high_impact_scopes: _Optional[_Iterable[str]] = ..., decided_by: _Optional[str] = ..., decision_reason: _Optional[str] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl_defaulted: _Optional[bool] = ..., **kwargs) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals", "next_page_token")
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    next_page_token: str
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("approval_id", "approve", "reason")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    approve: bool
    reason: str
    def __init__(self, approval_id: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideApprovalResponse(_message.Message):
    __slots__ = ("approval", "approved")
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    approved: bool
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ..., approved: _Optional[bool] = ...) -> None: ...

class BlastRadiusRequest(_message.Message):
    __slots__ = ("identity", "owner", "task_id")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    identity: str
    owner: str
    task_id: str
    def __init__(self, identity: _Optional[str] = ..., owner: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class ScopeClassCount(_message.Message):
    __slots__ = ("scopes",)
    CLASS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    scopes: int
    def __init__(self, scopes: _Optional[int] = ..., **kwargs) -> None: ...

class BlastRadiusResponse(_message.Message):
    __slots__ = ("live_grants", "audiences", "scopes_by_class", "high_impact_grants", "longest_remaining_ttl_seconds", "max_delegation_depth", "delegation_fan_out", "owners", "total_score")
    LIVE_GRANTS_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    SCOPES_BY_CLASS_FIELD_NUMBER: _ClassVar[int]
    HIGH_IMPACT_GRANTS_FIELD_NUMBER: _ClassVar[int]
    LONGEST_REMAINING_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_DELEGATION_DEPTH_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FAN_OUT_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    live_grants: int
    audiences: _containers.RepeatedScalarFieldContainer[str]
    scopes_by_class: _containers.RepeatedCompositeFieldContainer[ScopeClassCount]
    high_impact_grants: int
    longest_remaining_ttl_seconds: int
    max_delegation_depth: int
    delegation_fan_out: int
    owners: _containers.RepeatedScalarFieldContainer[str]
    total_score: int
    def __init__(self, live_grants: _Optional[int] = ..., audiences: _Optional[_Iterable[str]] = ..., scopes_by_class: _Optional[_Iterable[_Union[ScopeClassCount, _Mapping]]] = ..., high_impact_grants: _Optional[int] = ..., longest_remaining_ttl_seconds: _Optional[int] = ..., max_delegation_depth: _Optional[int] = ..., delegation_fan_out: _Optional[int] = ..., owners: _Optional[_Iterable[str]] = ..., total_score: _Optional[int] = ...) -> None: ...

class RotateSigningKeyRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class RotateSigningKeyResponse(_message.Message):
    __slots__ = ("new_key_id", "retired_key_id")
    NEW_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RETIRED_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    new_key_id: str
    retired_key_id: str
    def __init__(self, new_key_id: _Optional[str] = ..., retired_key_id: _Optional[str] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("policy_set_hash", "policies")
    POLICY_SET_HASH_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policy_set_hash: str
    policies: int
    def __init__(self, policy_set_hash: _Optional[str] = ..., policies: _Optional[int] = ...) -> None: ...

class OpenConsoleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenConsoleResponse(_message.Message):
    __slots__ = ("url", "expires_at")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
