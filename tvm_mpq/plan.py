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


def output_scale(act: tuple[Encoding | None, ...], weight: Encoding | None) -> np.ndarray:
    """The one float32 rescale of an integer accumulator: product of operand scales, per channel.

    Computed in float64 then rounded once, here only, so simulation and realization multiply by
    the very same float32 numbers.
    """
    s = np.float64(1.0)
    for a in act:
        if a is not None:
            s = s * np.float64(a.scale)
    if weight is not None:
        s = s * np.asarray(weight.scale, np.float64)
    return np.asarray(s, dtype=np.float32)
