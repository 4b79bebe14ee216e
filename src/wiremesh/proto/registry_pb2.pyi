from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(_message.Message):
    __slots__ = ("name", "idempotent", "returns_protobuf", "streaming")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    RETURNS_PROTOBUF_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    name: str
    idempotent: bool
    returns_protobuf: bool
    streaming: str
    def __init__(self, name: _Optional[str] = ..., idempotent: _Optional[bool] = ..., returns_protobuf: _Optional[bool] = ..., streaming: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "service", "address", "pid", "started_at", "state", "methods", "metadata", "groups", "subscriptions", "stats", "host")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    service: str
    address: str
    pid: int
    started_at: float
    state: str
    methods: _containers.RepeatedCompositeFieldContainer[Method]
    metadata: _containers.ScalarMap[str, str]
    groups: _containers.RepeatedScalarFieldContainer[str]
    subscriptions: _containers.RepeatedScalarFieldContainer[str]
    stats: _containers.ScalarMap[str, int]
    host: str
    def __init__(self, node_id: _Optional[str] = ..., service: _Optional[str] = ..., address: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[float] = ..., state: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[Method, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., groups: _Optional[_Iterable[str]] = ..., subscriptions: _Optional[_Iterable[str]] = ..., stats: _Optional[_Mapping[str, int]] = ..., host: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("state", "stats")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    state: str
    stats: _containers.ScalarMap[str, int]
    def __init__(self, state: _Optional[str] = ..., stats: _Optional[_Mapping[str, int]] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("register", "heartbeat", "update")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    register: Node
    heartbeat: Heartbeat
    update: Node
    def __init__(self, register: _Optional[_Union[Node, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., update: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class LeaseReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "nodes", "services", "epoch", "more")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    version: int
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    services: _containers.RepeatedScalarFieldContainer[str]
    epoch: str
    more: bool
    def __init__(self, version: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., services: _Optional[_Iterable[str]] = ..., epoch: _Optional[str] = ..., more: _Optional[bool] = ...) -> None: ...
