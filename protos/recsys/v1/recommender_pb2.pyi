from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    CACHE: _ClassVar[Source]
    PRECOMPUTED: _ClassVar[Source]
    ONLINE: _ClassVar[Source]
    FALLBACK: _ClassVar[Source]
SOURCE_UNSPECIFIED: Source
CACHE: Source
PRECOMPUTED: Source
ONLINE: Source
FALLBACK: Source

class BlendWeights(_message.Message):
    __slots__ = ("engagement", "quality")
    ENGAGEMENT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    engagement: float
    quality: float
    def __init__(self, engagement: _Optional[float] = ..., quality: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "num_results", "weights", "exclude_item_ids", "context", "explain")
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
    user_id: str
    num_results: int
    weights: BlendWeights
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    context: _containers.ScalarMap[str, str]
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., num_results: _Optional[int] = ..., weights: _Optional[_Union[BlendWeights, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Mapping[str, str]] = ..., explain: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("item_id", "score", "engagement", "quality", "explanation")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    engagement: float
    quality: float
    explanation: Explanation
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., engagement: _Optional[float] = ..., quality: _Optional[float] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "source")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    source: Source
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., source: _Optional[_Union[Source, str]] = ...) -> None: ...

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
