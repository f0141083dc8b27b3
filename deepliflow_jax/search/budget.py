"""What the searched model must meet: a latency, a size, a speed-up or a reference."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping


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
