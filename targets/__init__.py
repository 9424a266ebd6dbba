"""CPU targets: legacy target strings, CPU features, and whether compiled code can run here."""

from tvm_mpq.targets.target import (
    TRACKED_FEATURES,
    TargetInfo,
    check_runnable_here,
    host_features,
    host_target,
    parse_target,
)

__all__ = [
    "TRACKED_FEATURES",
    "TargetInfo",
    "check_runnable_here",
    "host_features",
    "host_target",
    "parse_target",
]
