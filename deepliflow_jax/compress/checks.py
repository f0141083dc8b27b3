"""The one validator of numeric compression arguments (pruning percent, bit widths).

Python would happily read ``True`` as 1 and ``float("10")`` as 10; a flag or a string
in a numeric argument is almost always a mistake (a mixed-up argument order, an
unparsed command-line value), so every compression entry point refuses both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def check_number(value: Any, name: str, what: str = "a number", *,
                 integer: bool = False) -> float | int:
    """A concrete real number: Python or NumPy int/float (or a 0-d numeric array).

    Args:
      value: the argument.
      name: its name, for the message.
      what: what it must be, for the message (e.g. ``"a number in [0, 100)"``).
      integer: require an integral value (``8`` or ``8.0``; not ``8.5``).

    Returns:
      ``float(value)``, or ``int(value)`` with ``integer``.

    Raises:
      ValueError: a bool, a string, a non-number, NaN/inf, or (``integer``) a fraction;
        the message names ``name``.

    Example:
      >>> check_number(np.float32(12.5), "percent")
      12.5
      >>> check_number("10", "percent", "a number in [0, 100)")
      Traceback (most recent call last):
      ...
      ValueError: percent must be a number in [0, 100), got the string '10'; pass the number ...
    """
    if not isinstance(value, int | float | str | bytes | np.generic) and \
            hasattr(value, "dtype") and np.ndim(value) == 0:
        value = np.asarray(value)  # a concrete 0-d array (NumPy or JAX)
    kind = value.dtype if isinstance(value, np.ndarray | np.generic) else None
    if isinstance(value, bool | np.bool_) or (kind is not None and kind == np.bool_):
        raise ValueError(f"{name} must be {what}, got the bool {value!r} (a flag, not a "
                         "number: is an argument in the wrong place?)")
    if isinstance(value, str | bytes):
        raise ValueError(f"{name} must be {what}, got the string {value!r}; pass the number "
                         "itself (e.g. float(text) on a command-line value)")
    numeric = isinstance(value, int | float | np.integer | np.floating) or (
        kind is not None and np.ndim(value) == 0
        and (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)))
    if not numeric:
        raise ValueError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if integer:
        if number != int(number):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return int(number)
    return number
