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
    __slots__ = ("kind", "id", "service", "method", "payload", "timeout_ms", "codec", "caller", "metadata", "topic", "error", "node_id", "not_run", "trace", "tracestate")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Frame.Kind]
        HELLO: _ClassVar[Frame.Kind]
        CALL: _ClassVar[Frame.Kind]
        REPLY: _ClassVar[Frame.Kind]
        ERROR: _ClassVar[Frame.Kind]
        CANCEL: _ClassVar[Frame.Kind]
        PUBLISH: _ClassVar[Frame.Kind]
    KIND_UNSPECIFIED: Frame.Kind
    HELLO: Frame.Kind
    CALL: Frame.Kind
    REPLY: Frame.Kind
    ERROR: Frame.Kind
    CANCEL: Frame.Kind
    PUBLISH: Frame.Kind
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_RUN_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    kind: Frame.Kind
    id: int
    service: str
    method: str
    payload: bytes
    timeout_ms: int
    codec: str
    caller: str
    metadata: _containers.ScalarMap[str, str]
    topic: str
    error: str
    node_id: str
    not_run: bool
    trace: bytes
    tracestate: str
    def __init__(self, kind: _Optional[_Union[Frame.Kind, str]] = ..., id: _Optional[int] = ..., service: _Optional[str] = ..., method: _Optional[str] = ..., payload: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., codec: _Optional[str] = ..., caller: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., topic: _Optional[str] = ..., error: _Optional[str] = ..., node_id: _Optional[str] = ..., not_run: _Optional[bool] = ..., trace: _Optional[bytes] = ..., tracestate: _Optional[str] = ...) -> None: ...
