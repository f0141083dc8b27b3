"""What the searched model must meet: a latency, a size, a speed-up or a reference."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the searched model must meet.

    Attributes:
      kind: ``"latency_ms"``, ``"size_mb"``, ``"speedup"`` or ``"reference"`` (as fast
        as the named reference plan, measured in the same rounds).
      value: the number, or the reference's name.
    """

    kind: str
    value: float | str

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        """``"120ms"``, ``"5MB"``, ``"2x"`` or a reference plan's name (e.g. ``"g70h10"``).

        Raises:
          ValueError: an empty text or a number that is not positive.
        """
        if isinstance(text, Budget):
            return text
        t = str(text).strip()
        for suffix, kind in (("ms", "latency_ms"), ("mb", "size_mb"), ("x", "speedup")):
            if t.lower().endswith(suffix):
                try:
                    value = float(t[: -len(suffix)])
                except ValueError:
                    break
                if not value > 0 or not math.isfinite(value):
                    raise ValueError(f"budget {text!r}: the {kind} must be a positive number")
                return cls(kind, value)
        if not t or not re.fullmatch(r"[A-Za-z_][\w.-]*", t):
            raise ValueError(f"budget {text!r}: expected a latency like '120ms', a size on disk "
                             "like '5MB', a speed-up like '2x' or a reference plan's name "
                             "like 'g70h10'")
        return cls("reference", t)

    def describe(self) -> str:
        if self.kind == "reference":  # a name, not a number
            return f"as fast as {self.value}"
        unit = {"latency_ms": " ms", "size_mb": " MB", "speedup": "x faster than dense"}
        return f"{float(self.value):g}{unit[self.kind]}"

    @property
    def relative(self) -> bool:
        """A speed-up or a reference's time: a budget relative to models timed with it."""
        return self.kind in ("speedup", "reference")

    @property
    def measure(self) -> str:
        """``"latency"`` or ``"size"``."""
        return "size" if self.kind == "size_mb" else "latency"

    def limit(self, dense_ms: float, whole_ms: Mapping[str, float]) -> float:
        """The budget as a number in the unit of :attr:`measure`: ms or bytes on disk.

        Args:
          dense_ms: the dense model's measured latency (a speed-up divides it).
          whole_ms: ``{reference name: measured latency in ms}`` timed in the same rounds
            as ``dense_ms`` (a ``"reference"`` budget is its latency).

        Raises:
          KeyError: a reference budget whose model was not timed.
        """
        if self.kind == "latency_ms":
            return float(self.value)
        if self.kind == "speedup":
            return dense_ms / float(self.value)
        if self.kind == "reference":
            return float(whole_ms[self.value])
        return float(self.value) * 1e6

    def figure(self, dense_ms: float, whole_ms: Mapping[str, float]) -> dict[str, Any]:
        """The budget's one figure: computed once, from the cost rounds (the only timings
        before the search), and used by the search, the console, the report, the results
        json and the final check alike (:func:`budget_cost`).

        Args:
          dense_ms, whole_ms: as :meth:`limit`: the dense model's and the reference
            models' medians in the cost rounds.

        Returns:
          JSON-ready ``{"kind", "value", "describe", "measure", "relative", "limit" (ms or
          bytes), "dense_ms"}``, and ``"speedup"`` (the dense time over the limit) for
          latency budgets.
        """
        limit = self.limit(dense_ms, whole_ms)
        out = {"kind": self.kind, "value": self.value, "describe": self.describe(),
               "measure": self.measure, "relative": self.relative, "limit": limit,
               "dense_ms": float(dense_ms)}
        if self.measure == "latency":
            out["speedup"] = float(dense_ms) / limit
        return out

    def nearest_feasible(self, fastest: float, dense_ms: float) -> str:
        """The budget of this kind nearest to ``fastest`` that the fastest plan meets, as
        :meth:`parse` reads it: ``fastest`` in ms (rounded up to 0.1 ms; a reference
        budget too), in bytes (rounded up to 0.01 MB), or ``dense_ms / fastest`` as a
        speed-up (rounded down to 0.01)."""
        if self.kind == "size_mb":
            return f"{math.ceil(fastest / 1e4 - 1e-9) / 100:g}MB"
        if self.kind == "speedup":
            return f"{math.floor(dense_ms / fastest * 100 + 1e-9) / 100:g}x"
        return f"{math.ceil(fastest * 10 - 1e-9) / 10:g}ms"


def describe_figure(figure: Mapping[str, Any]) -> str:
    """``"as fast as g70h10 = 433.3 ms (1.41x faster than the dense 612.0 ms)"``: the one
    text of :meth:`Budget.figure` that the console and the report print."""
    if figure["measure"] == "size":
        return f"{figure['limit'] / 1e6:.2f} MB on disk"
    if not figure["relative"]:
        return f"{figure['limit']:.1f} ms (the dense model: {figure['dense_ms']:.1f} ms)"
    return (f"{figure['describe']} = {figure['limit']:.1f} ms ({figure['speedup']:.2f}x faster "
            f"than the dense {figure['dense_ms']:.1f} ms in the same rounds)")


def budget_cost(figure: Mapping[str, Any], latency_ms: float, dense_ms: float,
                disk_bytes: float) -> float:
    """A measured model's cost in the unit of the budget's figure (:meth:`Budget.figure`).

    A size budget takes the bytes on disk and a fixed latency budget the measured ms. A
    relative budget (a speed-up or a reference's time, resolved from the cost rounds)
    takes the latency put on the cost rounds' clock, ``latency_ms * figure["dense_ms"] /
    dense_ms``: the model's speed-up over the dense model timed in its own rounds, so a
    change of machine load between the rounds does not move the budget.

    Args:
      figure: :meth:`Budget.figure`.
      latency_ms: the model's measured median.
      dense_ms: the dense model's median in the same rounds.
      disk_bytes: the model's checkpoint size on disk.
    """
    if figure["measure"] == "size":
        return float(disk_bytes)
    if not figure["relative"]:
        return float(latency_ms)
    return float(latency_ms) * figure["dense_ms"] / float(dense_ms)
