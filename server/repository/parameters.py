"""Typed ``parameters { key: "..." value { string_value: "..." } }`` of a model config.

Triton keeps every model parameter as a string. Each parameter warpserve reads is
declared once, here or in its backend's spec, with its type, default and meaning;
reading it checks the value and fails the load with a message that names the key,
the value and what was expected. Keys nobody declares are left alone, as in Triton
(other tools keep their own settings there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import ModelLoadError

T = TypeVar("T")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class Parameter(Generic[T]):
    key: str
    parse: Callable[[str], T]  # raises ValueError on a bad value
    default: T
    expected: str  # what a valid value looks like, for the error message
    help: str = ""

    def is_set(self, config: mc.ModelConfig) -> bool:
        return self.key in config.parameters

    def read(self, config: mc.ModelConfig) -> T:
        if self.key not in config.parameters:
            return self.default
        text = config.parameters[self.key].string_value.strip()
        try:
            return self.parse(text)
        except ValueError:
            hint = f" ({self.help})" if self.help else ""
            raise ModelLoadError(
                f"model '{config.name}': parameter {self.key}={text!r} is not valid; "
                f"expected {self.expected}{hint}"
            ) from None


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(text)
        return value

    return parse


def _number(text: str) -> float:
    value = float(text)
    if value != value or value < 0:  # NaN or negative
        raise ValueError(text)
    return value


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def integer(key: str, default: int, help: str = "", minimum: int = 0) -> Parameter[int]:
    return Parameter(key, _integer(minimum), default, f"an integer >= {minimum}", help)


def optional_integer(key: str, help: str = "", minimum: int = 1) -> Parameter[int | None]:
    """An integer whose default is computed by the reader (e.g. from the core count)."""
    return Parameter(key, _integer(minimum), None, f"an integer >= {minimum}", help)


def number(key: str, default: float, help: str = "") -> Parameter[float]:
    return Parameter(key, _number, default, "a non-negative number", help)


def flag(key: str, default: bool, help: str = "") -> Parameter[bool]:
    return Parameter(key, _flag, default, "true or false", help)


def choice(key: str, default: str, choices: tuple[str, ...], help: str = "") -> Parameter[str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text

    return Parameter(key, parse, default, "one of " + ", ".join(choices), help)


def integer_list(key: str, help: str = "") -> Parameter[tuple[int, ...]]:
    """Comma-separated positive integers, e.g. batch sizes ("1,8,32")."""

    def parse(text: str) -> tuple[int, ...]:
        if not text:
            return ()
        values = tuple(int(part) for part in text.split(","))
        if any(v < 1 for v in values):
            raise ValueError(text)
        return values

    return Parameter(key, parse, (), "comma-separated positive integers", help)


def integer_list_with_zeros(key: str, help: str = "") -> Parameter[tuple[int, ...]]:
    """Comma-separated integers >= 0, e.g. one per priority level ("0,64")."""

    def parse(text: str) -> tuple[int, ...]:
        if not text:
            return ()
        values = tuple(int(part) for part in text.split(","))
        if any(v < 0 for v in values):
            raise ValueError(text)
        return values

    return Parameter(key, parse, (), "comma-separated integers >= 0", help)


# Parameters every model may set, whatever its backend.
EXECUTION = choice(
    "execution",
    "auto",
    ("auto", "inline", "thread"),
    "inline runs batches on the event loop, thread on worker threads, auto measures",
)
BATCHING = choice(
    "batching",
    "",
    ("", "eager", "triton"),
    "triton waits up to max_queue_delay for a fuller batch even when an instance is idle",
)
BATCHES_PER_INSTANCE = integer(
    "batches_per_instance",
    1,
    "batches handed to a worker-thread instance at once (2: one running, the next waiting)",
    1,
)
GOLDEN_ATOL = number("golden_atol", 1e-4, "absolute tolerance of the golden-output check")
GOLDEN_RTOL = number("golden_rtol", 1e-3, "relative tolerance of the golden-output check")
COMMON = (EXECUTION, BATCHING, BATCHES_PER_INSTANCE, GOLDEN_ATOL, GOLDEN_RTOL)
