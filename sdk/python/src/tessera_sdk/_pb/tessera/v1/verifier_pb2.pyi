import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATE_UNSPECIFIED: _ClassVar[KeyState]
    KEY_STATE_CURRENT: _ClassVar[KeyState]
    KEY_STATE_NEXT: _ClassVar[KeyState]
    KEY_STATE_ACTIVE: _ClassVar[KeyState]
    KEY_STATE_RETIRING: _ClassVar[KeyState]
KEY_STATE_UNSPECIFIED: KeyState
KEY_STATE_CURRENT: KeyState
KEY_STATE_NEXT: KeyState
KEY_STATE_ACTIVE: KeyState
KEY_STATE_RETIRING: KeyState

class GetJwksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Jwk(_message.Message):
    __slots__ = ("kty", "crv", "x", "y", "kid", "alg", "use")
    KTY_FIELD_NUMBER: _ClassVar[int]
    CRV_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    ALG_FIELD_NUMBER: _ClassVar[int]
    USE_FIELD_NUMBER: _ClassVar[int]
    kty: str
    crv: str
    x: str
    y: str
    kid: str
    alg: str
    use: str
    def __init__(self, kty: _Optional[str] = ..., crv: _Optional[str] = ..., x: _Optional[str] = ..., y: _Optional[str] = ..., kid: _Optional[str] = ..., alg: _Optional[str] = ..., use: _Optional[str] = ...) -> None: ...

class GetJwksResponse(_message.Message):
    __slots__ = ("keys", "jwks_json", "status")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[Jwk]
    jwks_json: str
    status: _containers.RepeatedCompositeFieldContainer[KeyStatus]
    def __init__(self, keys: _Optional[_Iterable[_Union[Jwk, _Mapping]]] = ..., jwks_json: _Optional[str] = ..., status: _Optional[_Iterable[_Union[KeyStatus, _Mapping]]] = ...) -> None: ...

class KeyStatus(_message.Message):
    __slots__ = ("kid", "state", "published_at", "remove_at")
    KID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    REMOVE_AT_FIELD_NUMBER: _ClassVar[int]
    kid: str
    state: KeyState
    published_at: _timestamp_pb2.Timestamp
    remove_at: _timestamp_pb2.Timestamp
    def __init__(self, kid: _Optional[str] = ..., state: _Optional[_Union[KeyState, str]] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., remove_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IntrospectRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class IntrospectResponse(_message.Message):
    __slots__ = ("active", "sub", "aud", "scope", "task_id", "jti", "client_id", "iss", "iat", "exp", "token_type")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SUB_FIELD_NUMBER: _ClassVar[int]
    AUD_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISS_FIELD_NUMBER: _ClassVar[int]
    IAT_FIELD_NUMBER: _ClassVar[int]
    EXP_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    active: bool
    sub: str
    aud: str
    scope: str
    task_id: str
    jti: str
    client_id: str
    iss: str
    iat: _timestamp_pb2.Timestamp
    exp: _timestamp_pb2.Timestamp
    token_type: str
    def __init__(self, active: _Optional[bool] = ..., sub: _Optional[str] = ..., aud: _Optional[str] = ..., scope: _Optional[str] = ..., task_id: _Optional[str] = ..., jti: _Optional[str] = ..., client_id: _Optional[str] = ..., iss: _Optional[str] = ..., iat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., token_type: _Optional[str] = ...) -> None: ...

class WatchRevocationsRequest(_message.Message):
    __slots__ = ("after",)
    AFTER_FIELD_NUMBER: _ClassVar[int]
    after: str
    def __init__(self, after: _Optional[str] = ...) -> None: ...

class RevocationEvent(_message.Message):
    __slots__ = ("position", "revoked_at", "reason", "grant_id", "task_id", "kid", "not_after")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    position: str
    revoked_at: _timestamp_pb2.Timestamp
    reason: str
    grant_id: str
    task_id: str
    kid: str
    not_after: _timestamp_pb2.Timestamp
    def __init__(self, position: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., grant_id: _Optional[str] = ..., task_id: _Optional[str] = ..., kid: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("position", "sent_at")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    position: str
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, position: _Optional[str] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchRevocationsResponse(_message.Message):
    __slots__ = ("event", "heartbeat")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    event: RevocationEvent
    heartbeat: Heartbeat
    def __init__(self, event: _Optional[_Union[RevocationEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class ReportMisuseRequest(_message.Message):
    __slots__ = ("token", "presented_by")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PRESENTED_BY_FIELD_NUMBER: _ClassVar[int]
    token: str
    presented_by: str
    def __init__(self, token: _Optional[str] = ..., presented_by: _Optional[str] = ...) -> None: ...

class ReportMisuseResponse(_message.Message):
    __slots__ = ("misuse", "grants_revoked")
    MISUSE_FIELD_NUMBER: _ClassVar[int]
    GRANTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    misuse: bool
    grants_revoked: int
    def __init__(self, misuse: _Optional[bool] = ..., grants_revoked: _Optional[int] = ...) -> None: ...
