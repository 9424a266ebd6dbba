"""Errors tvm_mpq raises for bad input. Each names the offending thing; none is ever swallowed."""


class TvmMpqError(ValueError):
    """Base class: bad input to tvm_mpq (a ValueError, so generic handlers still catch it)."""


class TargetError(TvmMpqError):
    """A target string, dict or object tvm_mpq cannot use."""


class ConfigError(TvmMpqError):
    """A configuration that names unknown groups or candidates, or is malformed."""


class CalibrationError(TvmMpqError):
    """Calibration data that is empty, non-finite, or does not match the model's inputs."""


class ModelImportError(TvmMpqError):
    """A model tvm_mpq cannot import (unsupported type, failed export, missing example inputs)."""


class ModelUnavailable(ImportError):
    """A bundled model's weights package is not installed (tests skip on this)."""
