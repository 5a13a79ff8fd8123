from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutRequest(_message.Message):
    __slots__ = ("model", "version", "canary_percent")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    canary_percent: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., canary_percent: _Optional[float] = ...) -> None: ...

class RolloutResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class SetTrafficSplitRequest(_message.Message):
    __slots__ = ("model", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.ScalarMap[int, float]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Mapping[int, float]] = ...) -> None: ...

class SetTrafficSplitResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("model", "version", "percent")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    percent: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., percent: _Optional[float] = ...) -> None: ...

class SetShadowResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UnloadResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("count", "p50_ms", "p90_ms", "p99_ms")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    def __init__(self, count: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class VersionStatus(_message.Message):
    __slots__ = ("version", "state", "reason", "weight", "active", "shadow", "success_count", "failure_count", "in_flight", "latency", "shadow_max_abs_diff", "guard", "drift", "shed_count")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    SHED_COUNT_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    reason: str
    weight: float
    active: bool
    shadow: bool
    success_count: int
    failure_count: int
    in_flight: int
    latency: LatencySummary
    shadow_max_abs_diff: float
    guard: GuardStatus
    drift: DriftStatus
    shed_count: int
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., weight: _Optional[float] = ..., active: _Optional[bool] = ..., shadow: _Optional[bool] = ..., success_count: _Optional[int] = ..., failure_count: _Optional[int] = ..., in_flight: _Optional[int] = ..., latency: _Optional[_Union[LatencySummary, _Mapping]] = ..., shadow_max_abs_diff: _Optional[float] = ..., guard: _Optional[_Union[GuardStatus, _Mapping]] = ..., drift: _Optional[_Union[DriftStatus, _Mapping]] = ..., shed_count: _Optional[int] = ...) -> None: ...

class DriftStatus(_message.Message):
    __slots__ = ("alarm", "window_rows", "window_seconds", "min_rows", "psi_threshold", "ks_threshold", "alarms_raised", "features")
    ALARM_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    PSI_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    KS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ALARMS_RAISED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    alarm: bool
    window_rows: int
    window_seconds: float
    min_rows: int
    psi_threshold: float
    ks_threshold: float
    alarms_raised: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    def __init__(self, alarm: _Optional[bool] = ..., window_rows: _Optional[int] = ..., window_seconds: _Optional[float] = ..., min_rows: _Optional[int] = ..., psi_threshold: _Optional[float] = ..., ks_threshold: _Optional[float] = ..., alarms_raised: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ...) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("input", "feature", "psi", "ks", "over")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    KS_FIELD_NUMBER: _ClassVar[int]
    OVER_FIELD_NUMBER: _ClassVar[int]
    input: str
    feature: str
    psi: float
    ks: float
    over: bool
    def __init__(self, input: _Optional[str] = ..., feature: _Optional[str] = ..., psi: _Optional[float] = ..., ks: _Optional[float] = ..., over: _Optional[bool] = ...) -> None: ...

class GuardStatus(_message.Message):
    __slots__ = ("verdict", "baseline_version", "mode", "reason", "rolled_back", "median_ratio", "p99_ratio", "candidate_samples", "baseline_samples", "candidate_error_rate", "baseline_error_rate", "trace", "seconds_to_verdict")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_RATIO_FIELD_NUMBER: _ClassVar[int]
    P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_TO_VERDICT_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    baseline_version: int
    mode: str
    reason: str
    rolled_back: str
    median_ratio: float
    p99_ratio: float
    candidate_samples: int
    baseline_samples: int
    candidate_error_rate: float
    baseline_error_rate: float
    trace: str
    seconds_to_verdict: float
    def __init__(self, verdict: _Optional[str] = ..., baseline_version: _Optional[int] = ..., mode: _Optional[str] = ..., reason: _Optional[str] = ..., rolled_back: _Optional[str] = ..., median_ratio: _Optional[float] = ..., p99_ratio: _Optional[float] = ..., candidate_samples: _Optional[int] = ..., baseline_samples: _Optional[int] = ..., candidate_error_rate: _Optional[float] = ..., baseline_error_rate: _Optional[float] = ..., trace: _Optional[str] = ..., seconds_to_verdict: _Optional[float] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model", "versions", "previous_version", "fallback_model", "fallback_count")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_COUNT_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    previous_version: int
    fallback_model: str
    fallback_count: int
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., previous_version: _Optional[int] = ..., fallback_model: _Optional[str] = ..., fallback_count: _Optional[int] = ...) -> None: ...
