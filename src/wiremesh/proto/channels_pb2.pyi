from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Rules(_message.Message):
    __slots__ = ("history_size", "history_ttl")
    HISTORY_SIZE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TTL_FIELD_NUMBER: _ClassVar[int]
    history_size: int
    history_ttl: float
    def __init__(self, history_size: _Optional[int] = ..., history_ttl: _Optional[float] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("offset", "epoch")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    epoch: str
    def __init__(self, offset: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class Publication(_message.Message):
    __slots__ = ("channel", "data", "offset", "epoch", "kind")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PUB: _ClassVar[Publication.Kind]
        JOIN: _ClassVar[Publication.Kind]
        LEAVE: _ClassVar[Publication.Kind]
    PUB: Publication.Kind
    JOIN: Publication.Kind
    LEAVE: Publication.Kind
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    channel: str
    data: bytes
    offset: int
    epoch: str
    kind: Publication.Kind
    def __init__(self, channel: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ..., kind: _Optional[_Union[Publication.Kind, str]] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("session", "principal", "gateway")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    session: str
    principal: str
    gateway: str
    def __init__(self, session: _Optional[str] = ..., principal: _Optional[str] = ..., gateway: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("channel", "data", "rules", "kind")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    channel: str
    data: bytes
    rules: Rules
    kind: Publication.Kind
    def __init__(self, channel: _Optional[str] = ..., data: _Optional[bytes] = ..., rules: _Optional[_Union[Rules, _Mapping]] = ..., kind: _Optional[_Union[Publication.Kind, str]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("channel", "rules", "since")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    rules: Rules
    since: Position
    def __init__(self, channel: _Optional[str] = ..., rules: _Optional[_Union[Rules, _Mapping]] = ..., since: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class HistoryReply(_message.Message):
    __slots__ = ("position", "publications", "recovered", "reason")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PUBLICATIONS_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    position: Position
    publications: _containers.RepeatedCompositeFieldContainer[Publication]
    recovered: bool
    reason: str
    def __init__(self, position: _Optional[_Union[Position, _Mapping]] = ..., publications: _Optional[_Iterable[_Union[Publication, _Mapping]]] = ..., recovered: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("channel", "member", "ttl")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    member: Member
    ttl: float
    def __init__(self, channel: _Optional[str] = ..., member: _Optional[_Union[Member, _Mapping]] = ..., ttl: _Optional[float] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("added",)
    ADDED_FIELD_NUMBER: _ClassVar[int]
    added: bool
    def __init__(self, added: _Optional[bool] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("channel", "session")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    channel: str
    session: str
    def __init__(self, channel: _Optional[str] = ..., session: _Optional[str] = ...) -> None: ...

class ChannelRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class Members(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class RefreshRequest(_message.Message):
    __slots__ = ("entries", "ttl")
    class Entry(_message.Message):
        __slots__ = ("channel", "member")
        CHANNEL_FIELD_NUMBER: _ClassVar[int]
        MEMBER_FIELD_NUMBER: _ClassVar[int]
        channel: str
        member: Member
        def __init__(self, channel: _Optional[str] = ..., member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[RefreshRequest.Entry]
    ttl: float
    def __init__(self, entries: _Optional[_Iterable[_Union[RefreshRequest.Entry, _Mapping]]] = ..., ttl: _Optional[float] = ...) -> None: ...

class RefreshReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("id", "owner", "watch", "unwatch")
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    UNWATCH_FIELD_NUMBER: _ClassVar[int]
    id: int
    owner: str
    watch: str
    unwatch: str
    def __init__(self, id: _Optional[int] = ..., owner: _Optional[str] = ..., watch: _Optional[str] = ..., unwatch: _Optional[str] = ...) -> None: ...

class WatchReply(_message.Message):
    __slots__ = ("publications", "acks")
    PUBLICATIONS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    publications: _containers.RepeatedCompositeFieldContainer[Publication]
    acks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, publications: _Optional[_Iterable[_Union[Publication, _Mapping]]] = ..., acks: _Optional[_Iterable[int]] = ...) -> None: ...
