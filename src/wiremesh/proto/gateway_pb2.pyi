from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Batch(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("kind", "session", "payload", "text", "code", "reason", "session_id", "principal", "claims", "service", "path", "origin", "remote", "sender", "trace", "channel")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Frame.Kind]
        HELLO: _ClassVar[Frame.Kind]
        OPEN: _ClassVar[Frame.Kind]
        DATA: _ClassVar[Frame.Kind]
        CLOSE: _ClassVar[Frame.Kind]
        PUSH: _ClassVar[Frame.Kind]
        SUBSCRIBE: _ClassVar[Frame.Kind]
        JOIN: _ClassVar[Frame.Kind]
        LEAVE: _ClassVar[Frame.Kind]
    KIND_UNSPECIFIED: Frame.Kind
    HELLO: Frame.Kind
    OPEN: Frame.Kind
    DATA: Frame.Kind
    CLOSE: Frame.Kind
    PUSH: Frame.Kind
    SUBSCRIBE: Frame.Kind
    JOIN: Frame.Kind
    LEAVE: Frame.Kind
    class TraceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    kind: Frame.Kind
    session: int
    payload: bytes
    text: bool
    code: int
    reason: str
    session_id: str
    principal: str
    claims: str
    service: str
    path: str
    origin: str
    remote: str
    sender: str
    trace: _containers.ScalarMap[str, str]
    channel: str
    def __init__(self, kind: _Optional[_Union[Frame.Kind, str]] = ..., session: _Optional[int] = ..., payload: _Optional[bytes] = ..., text: _Optional[bool] = ..., code: _Optional[int] = ..., reason: _Optional[str] = ..., session_id: _Optional[str] = ..., principal: _Optional[str] = ..., claims: _Optional[str] = ..., service: _Optional[str] = ..., path: _Optional[str] = ..., origin: _Optional[str] = ..., remote: _Optional[str] = ..., sender: _Optional[str] = ..., trace: _Optional[_Mapping[str, str]] = ..., channel: _Optional[str] = ...) -> None: ...
