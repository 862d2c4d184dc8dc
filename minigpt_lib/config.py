"""Config dataclasses: type checks, so that a hand-edited or damaged config is a clear error rather than a
traceback, and one strict way to and from JSON."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, fields
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")
MAX_STEPS = 10**9  # a run bounded by a time budget alone takes this many steps at most
MAX_NEW_TOKENS = 2**16  # tokens one answer may take
MAX_BATCH = 2**16  # far above any batch of the course: a larger one is a typo, refused before allocating

_KINDS: dict[str, tuple[type, ...]] = {
    "int": (numbers.Integral,),
    "float": (numbers.Real,),
    "bool": (bool,),
    "str": (str,),
}


def check_field_types(config: Any) -> None:
    """Raise ValueError if a field of the dataclass `config` does not have its annotated type.

    Understands annotations made of int, float, bool, str and None (`float | None`, say); a bool is not
    accepted as a number, and a float must be finite. Fields with other annotations are not checked.
    """
    for field in fields(config):
        options = [part.strip() for part in str(field.type).split("|")]
        if not all(option in _KINDS or option == "None" for option in options):
            continue
        value = getattr(config, field.name)
        if value is None and "None" in options:
            continue
        fits = any(
            isinstance(value, _KINDS[option]) and (option == "bool" or not isinstance(value, bool))
            for option in options
            if option in _KINDS
        )
        name = f"{type(config).__name__}.{field.name}"
        if not fits:
            raise ValueError(f"{name} must be {' or '.join(options)}, got {value!r}")
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_range(config: Any, name: str, low: float, high: float) -> None:
    """Raise ValueError unless `low <= config.<name> <= high`."""
    value = getattr(config, name)
    if not low <= value <= high:
        raise ValueError(f"{type(config).__name__}.{name} must be between {low} and {high}, got {value!r}")


class Config:
    """What every config dataclass of the library shares: a JSON-ready dict, and one strict way back.

    Subclasses are dataclasses; their `__post_init__` checks their values (`check_field_types` and ranges).
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the config."""
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The config `to_dict` described; an unknown key, or a value of the wrong type, is a ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**data)
