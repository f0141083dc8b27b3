"""The one validator of numeric arguments: every public entry point checks its scalars here.

Any real-valued scalar is accepted: a Python ``int`` / ``float``, a NumPy scalar
(``np.float32(1e-4)``, ``np.int64(8)``), a concrete JAX scalar (``jnp.float32(1e-4)``,
a learning rate taken from an optax schedule) or a 0-d array of those; it comes back
as a plain Python ``int`` or ``float``, so its type never reaches a ``jax.jit`` cache
key (no extra trace or compile) nor a JSON record. A bool (a flag in the wrong place),
a string (an unparsed command-line value), NaN/inf, an array with elements and a value
out of range are refused with a ``ValueError`` that names the argument.

Like :mod:`deepliflow_jax.fileio`, this module imports nothing from the package, so every
layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["check_number", "check_numbers"]


def _range_text(minimum: float | None, maximum: float | None, above: float | None,
                below: float | None) -> str:
    low = (f"[{minimum:g}" if minimum is not None else
           f"({above:g}" if above is not None else None)
    high = (f"{maximum:g}]" if maximum is not None else
            f"{below:g})" if below is not None else None)
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" >= {minimum:g}" if minimum is not None else f" > {above:g}"
    if high:
        return f" <= {maximum:g}" if maximum is not None else f" < {below:g}"
    return ""


# JAX's narrow types (bfloat16, float8, int4) are ml_dtypes scalars, not NumPy subclasses
_NARROW = tuple(getattr(ml_dtypes, n) for n in (
    "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "int4", "uint4") if hasattr(ml_dtypes, n))
_REAL = (int, float, np.integer, np.floating, *_NARROW)


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_number(value: Any, name: str, what: str | None = None, *, integer: bool = False,
                 minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None) -> Any:
    """A concrete finite real number in range, as a Python ``int`` or ``float``.

    Args:
      value: the argument: a Python, NumPy or (concrete) JAX scalar, or a 0-d array.
      name: its name, for the message (``"lr"``, ``"--repeats"``, ``"prune_percents"``).
      what: what it must be, for the message (default: from ``integer`` and the range,
        e.g. ``"an integer >= 1"``, ``"a number in [0, 100)"``).
      integer: require an integral value (``8``, ``np.int64(8)`` or ``8.0``; not ``8.5``)
        and return an ``int``.
      minimum, maximum: inclusive bounds (None: none).
      above, below: exclusive bounds (None: none).

    Returns:
      ``int(value)`` with ``integer``, else ``float(value)``.

    Raises:
      ValueError: a bool, a string, a non-number, an array with elements, a traced
        value, NaN/inf, a fraction where an integer is needed, or a value out of range;
        the message names ``name``.

    Example:
      >>> check_number(np.float32(0.5), "lr", above=0)
      0.5
      >>> check_number(True, "steps", integer=True, minimum=0)
      Traceback (most recent call last):
      ...
      ValueError: steps must be an integer >= 0, got the bool True (a flag, not a number: ...
    """
    if what is None:
        what = ("an integer" if integer else "a number") + _range_text(minimum, maximum,
                                                                        above, below)
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be {what}, got the bool {value!r} (a flag, not a "
                         "number: is an argument in the wrong place?)")
    if isinstance(value, str | bytes):
        raise ValueError(f"{name} must be {what}, got the string {value!r}; pass the number "
                         "itself (e.g. float(text) on a command-line value)")
    if not isinstance(value, int | float | np.generic) and hasattr(value, "dtype"):
        try:  # a NumPy array or a concrete JAX array; a tracer has no value to check
            arr = np.asarray(value)
        except Exception as err:  # noqa: BLE001 - jax's tracer errors are not one class
            raise ValueError(f"{name} must be {what}, got a traced {type(value).__name__}: "
                             "pass a concrete value (outside jax.jit)") from err
        if arr.ndim != 0:
            raise ValueError(f"{name} must be {what} (a scalar), got an array of shape "
                             f"{arr.shape}")
        if arr.dtype == np.bool_:
            raise ValueError(f"{name} must be {what}, got the bool {bool(arr)} (a flag, not "
                             "a number: is an argument in the wrong place?)")
        value = arr[()]  # the NumPy scalar
    if not isinstance(value, _REAL):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {what}, got {number!r}")
    if integer and not number.is_integer():
        raise ValueError(f"{name} must be {what}, got {number!r}")
    if isinstance(value, int | np.integer):  # (int4 is read through float: exact)
        # exact: a large integer must not be compared through its rounded float
        result: Any = int(value)
    else:
        result = int(number) if integer else number
    if ((minimum is not None and result < minimum) or (maximum is not None and result > maximum)
            or (above is not None and result <= above) or (below is not None
                                                           and result >= below)):
        raise ValueError(f"{name} must be {what}, got {result!r}")
    return int(result) if integer else float(result)


def check_numbers(values: Any, name: str, what: str | None = None, **bounds: Any) -> tuple:
    """:func:`check_number` on each of a sequence of numbers; returns them as a tuple.

    ``what`` describes one element (default: as :func:`check_number`'s, e.g. "a number in
    [0, 100)"); the message names ``name[i]``. A string or a lone number is refused.

    Raises:
      ValueError: ``values`` is not a sequence, or an element is refused.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable) or (
            hasattr(values, "ndim") and values.ndim == 0):
        raise ValueError(f"{name} must be a sequence of numbers, got {_shown(values)}")
    return tuple(check_number(v, f"{name}[{i}]", what, **bounds)
                 for i, v in enumerate(values))
