"""tvm_mpq: target-aware mixed-precision post-training quantization for Apache TVM.

``tvm_mpq.compile(model, target, calibration=..., config=...)`` imports a float model, calibrates it
on unlabeled data, and returns a module whose layers run real integer kernels at the bit-widths of
the configuration (group name -> "w8a8" / "w4a8" / "w8a16" / "w16a16" / "float").
"""

from .config import DEFAULT_CANDIDATES, FLOAT, Candidate, Config
from .errors import (
    CalibrationError,
    ConfigError,
    ModelImportError,
    ModelUnavailable,
    TargetError,
    TvmMpqError,
)
from .quantizer import Quantizer
from .result import QuantizedModule

__version__ = "0.1.0"


def compile(  # noqa: A001 - the name users asked for, like tvm.compile
    model,
    target=None,
    calibration=None,
    config=None,
    example_inputs=None,
    method: str = "mse",
    progress: bool = True,
) -> QuantizedModule:
    """Quantize ``model`` per ``config`` and compile it for ``target``.

    model: a torch.nn.Module (with ``example_inputs``), a torch.export.ExportedProgram, an ONNX
        model or .onnx path, or a Relax IRModule (weights bound or as parameters).
    target: a legacy string ("llvm -mcpu=znver4"), a dict, a tvm.target.Target; None = this host.
    calibration: iterable of batches (tuple of arrays in input order, or one array).
    config: a tvm_mpq.Config, a JSON path, or one candidate for all groups; None = uniform "w8a8"
        (the search that picks one lands with the search issue).
    method: activation range method, "mse" (default) or "minmax".
    """
    quantizer = Quantizer(model, target, calibration, example_inputs, method=method, progress=progress)
    return quantizer.realize(config)


__all__ = [
    "compile", "Quantizer", "QuantizedModule", "Config", "Candidate", "FLOAT", "DEFAULT_CANDIDATES",
    "TvmMpqError", "TargetError", "ConfigError", "CalibrationError", "ModelImportError", "ModelUnavailable",
]
