"""QuantizedModule: what ``tvm_mpq.compile`` returns -- a runnable, exportable integer module."""

from __future__ import annotations

import os

import numpy as np
import tvm
from tvm import relax

from tvm_mpq.targets import check_runnable_here

from .calibration import sqnr_db
from .config import Config
from .quantizer import flatten_outputs


class QuantizedModule:
    """A configuration realized with integer kernels and compiled for a target."""

    def __init__(self, quantizer, config: Config, executable, ir_module, op_report, compile_seconds):
        self.quantizer = quantizer
        self.config: Config = config
        self.executable = executable
        #: The realized Relax module before the backend pipeline (for inspection).
        self.ir_module = ir_module
        self.op_report: list[dict] = op_report
        self.compile_seconds = compile_seconds
        self.target = quantizer.target
        self._vm = None

    # --------------------------------------------------------------------------------- running
    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            check_runnable_here(self.target)
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
        return self._vm

    def run(self, *inputs):
        """numpy (or torch) in; a numpy array, or a tuple of arrays for several outputs, out."""
        outs = []
        for chunk in self.quantizer.check_inputs(inputs):
            outs.append(flatten_outputs(self.vm["main"](*[tvm.runtime.tensor(a) for a in chunk])))
        flat = [np.concatenate(parts) for parts in zip(*outs)]
        return flat[0] if len(flat) == 1 else tuple(flat)

    def export_library(self, path: str | os.PathLike, **kwargs) -> None:
        """Write a shared library loadable with ``tvm.runtime.load_module`` (and TVM's RPC)."""
        self.executable.export_library(os.fspath(path), **kwargs)

    # --------------------------------------------------------------------------------- reporting
    @property
    def unquantized_ops(self) -> list[tuple[str, str, str]]:
        """(binding, op, reason) of ops tvm_mpq could not quantize: they run in float."""
        return list(self.quantizer.graph.unquantized)

    @property
    def float_groups(self) -> list[str]:
        return [g for g, c in self.config.items() if c.is_float]

    def layer_table(self) -> list[dict]:
        """One row per quantizable op: group, candidate, kernel dtypes, range methods, MACs."""
        q = self.quantizer
        by_op = {r["op"]: r for r in self.op_report}
        rows = []
        for name, op in q.graph.ops.items():
            groups = [q.graph.group_of(name, i).name for i in range(len(op.inputs))]
            cand = self.config[groups[0]]
            r = by_op.get(name, {})
            act_methods = []
            for g in groups:
                c = self.config[g]
                act_methods.append("-" if c.is_float else q.activation_encoding(g, c.activation_bits).method)
            w_method = "-"
            if op.weight is not None and not cand.is_float:
                w_method = q.weight_quant(name, cand.weight_bits)[0].method
            rows.append(
                {
                    "op": name, "kind": op.kind, "group": groups[0] if len(groups) == 1 else " | ".join(groups),
                    "candidate": "/".join(str(self.config[g]) for g in dict.fromkeys(groups)),
                    "activation": r.get("activation", "float32"), "weight": r.get("weight", "float32"),
                    "accumulator": r.get("accumulator", "float32"),
                    "act_range": "/".join(act_methods), "weight_range": w_method, "macs": op.macs,
                }
            )
        return rows

    def summary(self) -> str:
        """A plain-text per-layer table, then the ops left in float."""
        rows = self.layer_table()
        cols = [("op", "op"), ("kind", "kind"), ("candidate", "cand"), ("activation", "act"),
                ("weight", "weight"), ("accumulator", "acc"), ("act_range", "act range"),
                ("weight_range", "w range"), ("macs", "MACs")]
        cells = [[h for _, h in cols]] + [[f"{r[k]:,}" if k == "macs" else str(r[k]) for k, _ in cols] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"{len(rows)} quantizable ops in {len(self.config)} groups; target {self.target}; "
                     f"compiled in {self.compile_seconds:.1f} s")
        if self.unquantized_ops:
            lines.append("left in float (no integer realization): " + ", ".join(
                f"{v} ({op.split('.')[-1]}: {why})" for v, op, why in self.unquantized_ops))
        return "\n".join(lines)

    def sqnr_vs_float(self, *inputs) -> float:
        """SQNR (dB) of this module's outputs against the float model's on ``inputs``."""
        ref = np.concatenate([o.ravel() for o in self.quantizer.run_float(*inputs)])
        out = self.run(*inputs)
        out = np.concatenate([o.ravel() for o in (out if isinstance(out, tuple) else (out,))])
        return sqnr_db(ref, out)
