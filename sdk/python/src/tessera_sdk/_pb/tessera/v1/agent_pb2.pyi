import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestTokenRequest(_message.Message):
    __slots__ = ("task_id", "audience", "scopes", "ttl_seconds", "pop_proof", "mtls_binding", "authorization_details")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POP_PROOF_FIELD_NUMBER: _ClassVar[int]
    MTLS_BINDING_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_DETAILS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    audience: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    pop_proof: str
    mtls_binding: bool
    authorization_details: str
    def __init__(self, task_id: _Optional[str] = ..., audience: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., pop_proof: _Optional[str] = ..., mtls_binding: _Optional[bool] = ..., authorization_details: _Optional[str] = ...) -> None: ...

class RequestTokenResponse(_message.Message):
    __slots__ = ("token", "pending")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    token: IssuedToken
    pending: PendingApproval
    def __init__(self, token: _Optional[_Union[IssuedToken, _Mapping]] = ..., pending: _Optional[_Union[PendingApproval, _Mapping]] = ...) -> None: ...

class IssuedToken(_message.Message):
    __slots__ = ("access_token", "token_type", "grant_id", "task_id", "audience", "scopes", "issued_at", "expires_at", "expires_in", "blast_radius", "approval_id")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CLASS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    BLAST_RADIUS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    token_type: str
    grant_id: str
    task_id: str
    audience: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    expires_in: int
    blast_radius: int
    approval_id: str
    def __init__(self, access_token: _Optional[str] = ..., token_type: _Optional[str] = ..., grant_id: _Optional[str] = ..., task_id: _Optional[str] = ..., audience: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_in: _Optional[int] = ..., blast_radius: _Optional[int] = ..., approval_id: _Optional[str] = ..., **kwargs) -> None: ...

class PendingApproval(_message.Message):
    __slots__ = ("approval_id", "expires_at", "reason")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, approval_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class AwaitApprovalRequest(_message.Message):
    __slots__ = ("approval_id",)
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    def __init__(self, approval_id: _Optional[str] = ...) -> None: ...

class AwaitApprovalResponse(_message.Message):
    __slots__ = ("still_pending", "token")
    STILL_PENDING_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    still_pending: PendingApproval
    token: IssuedToken
    def __init__(self, still_pending: _Optional[_Union[PendingApproval, _Mapping]] = ..., token: _Optional[_Union[IssuedToken, _Mapping]] = ...) -> None: ...

class DelegateTokenRequest(_message.Message):
    __slots__ = ("parent_token", "delegate", "scopes", "ttl_seconds", "audience", "task_id", "delegate_pop_proof", "authorization_details")
    PARENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_POP_PROOF_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_DETAILS_FIELD_NUMBER: _ClassVar[int]
    parent_token: str
    delegate: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    audience: str
    task_id: str
    delegate_pop_proof: str
    authorization_details: str
    def __init__(self, parent_token: _Optional[str] = ..., delegate: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., audience: _Optional[str] = ..., task_id: _Optional[str] = ..., delegate_pop_proof: _Optional[str] = ..., authorization_details: _Optional[str] = ...) -> None: ...

class DelegationOffer(_message.Message):
    __slots__ = ("offer", "delegate", "expires_at")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    offer: str
    delegate: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, offer: _Optional[str] = ..., delegate: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RedeemDelegationRequest(_message.Message):
    __slots__ = ("offer", "pop_proof")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    POP_PROOF_FIELD_NUMBER: _ClassVar[int]
    offer: str
    pop_proof: str
    def __init__(self, offer: _Optional[str] = ..., pop_proof: _Optional[str] = ...) -> None: ...

class ReleaseTokenRequest(_message.Message):
    __slots__ = ("grant_id", "token")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    token: str
    def __init__(self, grant_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class ReleaseTokenResponse(_message.Message):
    __slots__ = ("grant_id", "revoked")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    revoked: bool
    def __init__(self, grant_id: _Optional[str] = ..., revoked: _Optional[bool] = ...) -> None: ...
