from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlendMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLEND_MODE_UNSPECIFIED: _ClassVar[BlendMode]
    ADDITIVE: _ClassVar[BlendMode]
    MULTIPLICATIVE: _ClassVar[BlendMode]

class BlendTransform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLEND_TRANSFORM_UNSPECIFIED: _ClassVar[BlendTransform]
    IDENTITY: _ClassVar[BlendTransform]
    LOG: _ClassVar[BlendTransform]
    LOGIT: _ClassVar[BlendTransform]

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    CACHE: _ClassVar[Source]
    PRECOMPUTED: _ClassVar[Source]
    ONLINE: _ClassVar[Source]
    FALLBACK: _ClassVar[Source]
    EVENTS: _ClassVar[Source]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    IMPRESSION: _ClassVar[EventType]
    ENGAGEMENT: _ClassVar[EventType]
    RATING: _ClassVar[EventType]
BLEND_MODE_UNSPECIFIED: BlendMode
ADDITIVE: BlendMode
MULTIPLICATIVE: BlendMode
BLEND_TRANSFORM_UNSPECIFIED: BlendTransform
IDENTITY: BlendTransform
LOG: BlendTransform
LOGIT: BlendTransform
SOURCE_UNSPECIFIED: Source
CACHE: Source
PRECOMPUTED: Source
ONLINE: Source
FALLBACK: Source
EVENTS: Source
EVENT_TYPE_UNSPECIFIED: EventType
IMPRESSION: EventType
ENGAGEMENT: EventType
RATING: EventType

class BlendWeights(_message.Message):
    __slots__ = ("engagement", "quality", "mode", "transform")
    ENGAGEMENT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    engagement: float
    quality: float
    mode: BlendMode
    transform: BlendTransform
    def __init__(self, engagement: _Optional[float] = ..., quality: _Optional[float] = ..., mode: _Optional[_Union[BlendMode, str]] = ..., transform: _Optional[_Union[BlendTransform, str]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "num_results", "weights", "exclude_item_ids", "context", "explain", "force_arm")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    FORCE_ARM_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    num_results: int
    weights: BlendWeights
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    context: _containers.ScalarMap[str, str]
    explain: bool
    force_arm: str
    def __init__(self, user_id: _Optional[str] = ..., num_results: _Optional[int] = ..., weights: _Optional[_Union[BlendWeights, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Mapping[str, str]] = ..., explain: _Optional[bool] = ..., force_arm: _Optional[str] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("retrieval_score", "retrieval_rank", "engagement_rank", "quality_rank", "blend_rank")
    RETRIEVAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_RANK_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_RANK_FIELD_NUMBER: _ClassVar[int]
    QUALITY_RANK_FIELD_NUMBER: _ClassVar[int]
    BLEND_RANK_FIELD_NUMBER: _ClassVar[int]
    retrieval_score: float
    retrieval_rank: int
    engagement_rank: int
    quality_rank: int
    blend_rank: int
    def __init__(self, retrieval_score: _Optional[float] = ..., retrieval_rank: _Optional[int] = ..., engagement_rank: _Optional[int] = ..., quality_rank: _Optional[int] = ..., blend_rank: _Optional[int] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "engagement", "quality", "explanation", "quality_rating")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_RATING_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    engagement: float
    quality: float
    explanation: Explanation
    quality_rating: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., engagement: _Optional[float] = ..., quality: _Optional[float] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., quality_rating: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "source", "blend", "engagement_calibrated", "request_id", "arm")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BLEND_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    source: Source
    blend: BlendWeights
    engagement_calibrated: bool
    request_id: str
    arm: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., source: _Optional[_Union[Source, str]] = ..., blend: _Optional[_Union[BlendWeights, _Mapping]] = ..., engagement_calibrated: _Optional[bool] = ..., request_id: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "num_results")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    num_results: int
    def __init__(self, item_id: _Optional[str] = ..., num_results: _Optional[int] = ...) -> None: ...

class SimilarItem(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SimilarItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[SimilarItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "type", "value", "timestamp", "request_id", "position")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    value: float
    timestamp: int
    request_id: str
    position: int
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., value: _Optional[float] = ..., timestamp: _Optional[int] = ..., request_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class LogEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class LogEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...
