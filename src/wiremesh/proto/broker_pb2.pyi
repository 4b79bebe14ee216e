from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("id", "kind", "topic", "body", "codec", "headers", "attempt")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    topic: str
    body: bytes
    codec: str
    headers: _containers.ScalarMap[str, str]
    attempt: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., topic: _Optional[str] = ..., body: _Optional[bytes] = ..., codec: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., attempt: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("routed",)
    ROUTED_FIELD_NUMBER: _ClassVar[int]
    routed: int
    def __init__(self, routed: _Optional[int] = ...) -> None: ...

class Binding(_message.Message):
    __slots__ = ("service", "handler", "kind", "patterns", "delivery", "node_id", "prefetch")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    service: str
    handler: str
    kind: str
    patterns: _containers.RepeatedScalarFieldContainer[str]
    delivery: str
    node_id: str
    prefetch: int
    def __init__(self, service: _Optional[str] = ..., handler: _Optional[str] = ..., kind: _Optional[str] = ..., patterns: _Optional[_Iterable[str]] = ..., delivery: _Optional[str] = ..., node_id: _Optional[str] = ..., prefetch: _Optional[int] = ...) -> None: ...

class Retry(_message.Message):
    __slots__ = ("tag", "delay", "reason")
    TAG_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tag: int
    delay: float
    reason: str
    def __init__(self, tag: _Optional[int] = ..., delay: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Dead(_message.Message):
    __slots__ = ("tag", "reason")
    TAG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tag: int
    reason: str
    def __init__(self, tag: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Settle(_message.Message):
    __slots__ = ("acks", "retries", "deads")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    DEADS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedScalarFieldContainer[int]
    retries: _containers.RepeatedCompositeFieldContainer[Retry]
    deads: _containers.RepeatedCompositeFieldContainer[Dead]
    def __init__(self, acks: _Optional[_Iterable[int]] = ..., retries: _Optional[_Iterable[_Union[Retry, _Mapping]]] = ..., deads: _Optional[_Iterable[_Union[Dead, _Mapping]]] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("subscribe", "settle")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    SETTLE_FIELD_NUMBER: _ClassVar[int]
    subscribe: Binding
    settle: Settle
    def __init__(self, subscribe: _Optional[_Union[Binding, _Mapping]] = ..., settle: _Optional[_Union[Settle, _Mapping]] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("tag", "envelope")
    TAG_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    tag: int
    envelope: Envelope
    def __init__(self, tag: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class Deliveries(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ...) -> None: ...

class ListDeadRequest(_message.Message):
    __slots__ = ("limit", "ids")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, limit: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("envelope", "reason", "queue", "died_at")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    DIED_AT_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    reason: str
    queue: str
    died_at: float
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., reason: _Optional[str] = ..., queue: _Optional[str] = ..., died_at: _Optional[float] = ...) -> None: ...

class DeadLetters(_message.Message):
    __slots__ = ("dead_letters",)
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ...) -> None: ...

class MessageIds(_message.Message):
    __slots__ = ("ids", "all")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class Count(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...
