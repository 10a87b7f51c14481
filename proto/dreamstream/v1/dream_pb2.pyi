from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]

class ChannelMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_MODE_UNSPECIFIED: _ClassVar[ChannelMode]
    CHANNEL_MODE_STRONGEST: _ClassVar[ChannelMode]
    CHANNEL_MODE_WEAKEST: _ClassVar[ChannelMode]
    CHANNEL_MODE_AVERAGE: _ClassVar[ChannelMode]

class BlendMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLEND_MODE_UNSPECIFIED: _ClassVar[BlendMode]
    BLEND_MODE_FIXED: _ClassVar[BlendMode]
    BLEND_MODE_LOOP: _ClassVar[BlendMode]
    BLEND_MODE_RANDOM: _ClassVar[BlendMode]
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat
CHANNEL_MODE_UNSPECIFIED: ChannelMode
CHANNEL_MODE_STRONGEST: ChannelMode
CHANNEL_MODE_WEAKEST: ChannelMode
CHANNEL_MODE_AVERAGE: ChannelMode
BLEND_MODE_UNSPECIFIED: BlendMode
BLEND_MODE_FIXED: BlendMode
BLEND_MODE_LOOP: BlendMode
BLEND_MODE_RANDOM: BlendMode

class ChannelList(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, channels: _Optional[_Iterable[int]] = ...) -> None: ...

class DreamRequest(_message.Message):
    __slots__ = ("image", "model", "layers", "octaves", "octave_scale", "steps_per_octave", "step_size", "jitter", "seed", "max_size", "width", "height", "format", "guide", "channels", "channel_mode", "channel_count", "rank_channels_per_octave", "original_colors", "lap_levels", "tv_weight", "octaves_above", "return_largest", "repeat", "tile_size", "tile_overlap")
    class LayersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ChannelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ChannelList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ChannelList, _Mapping]] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OCTAVES_FIELD_NUMBER: _ClassVar[int]
    OCTAVE_SCALE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_OCTAVE_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    GUIDE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_MODE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    RANK_CHANNELS_PER_OCTAVE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_COLORS_FIELD_NUMBER: _ClassVar[int]
    LAP_LEVELS_FIELD_NUMBER: _ClassVar[int]
    TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    OCTAVES_ABOVE_FIELD_NUMBER: _ClassVar[int]
    RETURN_LARGEST_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: str
    layers: _containers.ScalarMap[str, float]
    octaves: int
    octave_scale: float
    steps_per_octave: int
    step_size: float
    jitter: int
    seed: int
    max_size: int
    width: int
    height: int
    format: ImageFormat
    guide: bytes
    channels: _containers.MessageMap[str, ChannelList]
    channel_mode: ChannelMode
    channel_count: int
    rank_channels_per_octave: bool
    original_colors: bool
    lap_levels: int
    tv_weight: float
    octaves_above: int
    return_largest: bool
    repeat: int
    tile_size: int
    tile_overlap: int
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[str] = ..., layers: _Optional[_Mapping[str, float]] = ..., octaves: _Optional[int] = ..., octave_scale: _Optional[float] = ..., steps_per_octave: _Optional[int] = ..., step_size: _Optional[float] = ..., jitter: _Optional[int] = ..., seed: _Optional[int] = ..., max_size: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., guide: _Optional[bytes] = ..., channels: _Optional[_Mapping[str, ChannelList]] = ..., channel_mode: _Optional[_Union[ChannelMode, str]] = ..., channel_count: _Optional[int] = ..., rank_channels_per_octave: _Optional[bool] = ..., original_colors: _Optional[bool] = ..., lap_levels: _Optional[int] = ..., tv_weight: _Optional[float] = ..., octaves_above: _Optional[int] = ..., return_largest: _Optional[bool] = ..., repeat: _Optional[int] = ..., tile_size: _Optional[int] = ..., tile_overlap: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("octave", "octaves", "step", "steps_per_octave", "loss", "elapsed_seconds", "done", "round", "tiles")
    OCTAVE_FIELD_NUMBER: _ClassVar[int]
    OCTAVES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_OCTAVE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    octave: int
    octaves: int
    step: int
    steps_per_octave: int
    loss: float
    elapsed_seconds: float
    done: float
    round: int
    tiles: int
    def __init__(self, octave: _Optional[int] = ..., octaves: _Optional[int] = ..., step: _Optional[int] = ..., steps_per_octave: _Optional[int] = ..., loss: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., done: _Optional[float] = ..., round: _Optional[int] = ..., tiles: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("octave", "octaves", "width", "height", "image", "format", "final", "round")
    OCTAVE_FIELD_NUMBER: _ClassVar[int]
    OCTAVES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    octave: int
    octaves: int
    width: int
    height: int
    image: bytes
    format: ImageFormat
    final: bool
    round: int
    def __init__(self, octave: _Optional[int] = ..., octaves: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., image: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., final: _Optional[bool] = ..., round: _Optional[int] = ...) -> None: ...

class ImageSize(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class DreamStarted(_message.Message):
    __slots__ = ("request_id", "model", "layers", "octave_sizes", "octave_scale", "steps_per_octave", "step_size", "jitter", "seed", "format", "output_size")
    class LayersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OCTAVE_SIZES_FIELD_NUMBER: _ClassVar[int]
    OCTAVE_SCALE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_OCTAVE_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    layers: _containers.ScalarMap[str, float]
    octave_sizes: _containers.RepeatedCompositeFieldContainer[ImageSize]
    octave_scale: float
    steps_per_octave: int
    step_size: float
    jitter: int
    seed: int
    format: ImageFormat
    output_size: ImageSize
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., layers: _Optional[_Mapping[str, float]] = ..., octave_sizes: _Optional[_Iterable[_Union[ImageSize, _Mapping]]] = ..., octave_scale: _Optional[float] = ..., steps_per_octave: _Optional[int] = ..., step_size: _Optional[float] = ..., jitter: _Optional[int] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., output_size: _Optional[_Union[ImageSize, _Mapping]] = ...) -> None: ...

class DreamResponse(_message.Message):
    __slots__ = ("progress", "frame", "started")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    frame: Frame
    started: DreamStarted
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., started: _Optional[_Union[DreamStarted, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Layer(_message.Message):
    __slots__ = ("name", "channels", "stride")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    name: str
    channels: int
    stride: int
    def __init__(self, name: _Optional[str] = ..., channels: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "backbone", "layers", "default_layers", "min_size", "max_size", "supports_guide", "can_classify", "max_untiled_size")
    class DefaultLayersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_GUIDE_FIELD_NUMBER: _ClassVar[int]
    CAN_CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    MAX_UNTILED_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    backbone: str
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    default_layers: _containers.ScalarMap[str, float]
    min_size: int
    max_size: int
    supports_guide: bool
    can_classify: bool
    max_untiled_size: int
    def __init__(self, name: _Optional[str] = ..., backbone: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., default_layers: _Optional[_Mapping[str, float]] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ..., supports_guide: _Optional[bool] = ..., can_classify: _Optional[bool] = ..., max_untiled_size: _Optional[int] = ...) -> None: ...

class UnavailableModel(_message.Message):
    __slots__ = ("name", "problem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    problem: str
    def __init__(self, name: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model", "unavailable_models")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    default_model: str
    unavailable_models: _containers.RepeatedCompositeFieldContainer[UnavailableModel]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., default_model: _Optional[str] = ..., unavailable_models: _Optional[_Iterable[_Union[UnavailableModel, _Mapping]]] = ...) -> None: ...

class VideoSettings(_message.Message):
    __slots__ = ("dream", "blend", "blend_mode", "flow", "layer_schedule", "window")
    DREAM_FIELD_NUMBER: _ClassVar[int]
    BLEND_FIELD_NUMBER: _ClassVar[int]
    BLEND_MODE_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    LAYER_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    dream: DreamRequest
    blend: float
    blend_mode: BlendMode
    flow: bool
    layer_schedule: _containers.RepeatedScalarFieldContainer[str]
    window: int
    def __init__(self, dream: _Optional[_Union[DreamRequest, _Mapping]] = ..., blend: _Optional[float] = ..., blend_mode: _Optional[_Union[BlendMode, str]] = ..., flow: _Optional[bool] = ..., layer_schedule: _Optional[_Iterable[str]] = ..., window: _Optional[int] = ...) -> None: ...

class DreamVideoRequest(_message.Message):
    __slots__ = ("settings", "frame")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    settings: VideoSettings
    frame: bytes
    def __init__(self, settings: _Optional[_Union[VideoSettings, _Mapping]] = ..., frame: _Optional[bytes] = ...) -> None: ...

class AnimationFrame(_message.Message):
    __slots__ = ("index", "width", "height", "image", "format", "blend", "layers", "elapsed_seconds")
    class LayersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BLEND_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    width: int
    height: int
    image: bytes
    format: ImageFormat
    blend: float
    layers: _containers.ScalarMap[str, float]
    elapsed_seconds: float
    def __init__(self, index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., image: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., blend: _Optional[float] = ..., layers: _Optional[_Mapping[str, float]] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class DreamVideoResponse(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: AnimationFrame
    def __init__(self, frame: _Optional[_Union[AnimationFrame, _Mapping]] = ...) -> None: ...

class ZoomRequest(_message.Message):
    __slots__ = ("dream", "frames", "zoom", "rotate", "shift_x", "shift_y")
    DREAM_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ZOOM_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    SHIFT_X_FIELD_NUMBER: _ClassVar[int]
    SHIFT_Y_FIELD_NUMBER: _ClassVar[int]
    dream: DreamRequest
    frames: int
    zoom: float
    rotate: float
    shift_x: float
    shift_y: float
    def __init__(self, dream: _Optional[_Union[DreamRequest, _Mapping]] = ..., frames: _Optional[int] = ..., zoom: _Optional[float] = ..., rotate: _Optional[float] = ..., shift_x: _Optional[float] = ..., shift_y: _Optional[float] = ...) -> None: ...

class ZoomResponse(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: AnimationFrame
    def __init__(self, frame: _Optional[_Union[AnimationFrame, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "model", "top")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: str
    top: int
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[str] = ..., top: _Optional[int] = ...) -> None: ...

class ClassProbability(_message.Message):
    __slots__ = ("label", "probability", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    index: int
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ..., index: _Optional[int] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "classes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    model: str
    classes: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    def __init__(self, model: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ...) -> None: ...
