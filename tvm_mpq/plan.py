"""The data that joins calibration to realization: how each quantizable op is quantized."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import Encoding


@dataclass(frozen=True)
class OpQuant:
    """Quantization of one op: an Encoding per activation operand (None = float) and its weight.

    ``weight_q`` holds the integer weight values in the weight *parameter's* layout (OIHW for conv,
    the source layout for dense), produced by ``weight.quantize`` -- the same arithmetic the
    simulation uses on the host, so realized and simulated weights are the same numbers.
    """

    act: tuple[Encoding | None, ...]
    weight: Encoding | None = None
    weight_q: np.ndarray | None = None

    @property
    def is_float(self) -> bool:
        return all(a is None for a in self.act)
