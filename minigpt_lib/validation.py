"""Type checks for config dataclasses, so a hand-edited or damaged config is a clear error, not a traceback."""

from __future__ import annotations

import math
import numbers
from dataclasses import fields
from typing import Any

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
