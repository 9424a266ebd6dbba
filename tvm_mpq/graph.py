"""Find the quantizable ops of a canonical float model and tie them into quantizer groups.

A quantizer group (DESIGN §1) is one activation tensor -- the output of a producer, found by walking
back from each consumer through data-movement ops -- plus every quantizable op that consumes it.
One candidate per group sets the activation bits and the weight bits of those consumers: exactly what
one integer kernel (e.g. int16 activations x int8 weights) needs.

Ops are keyed by stable names: a weighted op by its weight parameter's source name minus
".weight" ("features.3.conv.1.0"), an activation x activation matmul by the module prefix of the
weighted op before it plus a counter ("encoder.layer.0.attention.self.matmul_0").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from .frontend import FloatModel
from .relax_utils import op_name, static_shape

#: Ops that only move or select data: an activation's quantizer is traced back through them.
DATA_MOVEMENT_OPS = frozenset(
    {
        "relax.reshape",
        "relax.permute_dims",
        "relax.flatten",
        "relax.expand_dims",
        "relax.squeeze",
        "relax.strided_slice",
        "relax.nn.max_pool2d",
        "relax.image.resize2d",
    }
)

#: Ops that look quantizable but have no realization yet: listed in the result, left float.
_NOT_YET_QUANTIZABLE = ("conv1d", "conv3d", "conv2d_transpose", "conv1d_transpose", "einsum", "linear")


@dataclass(frozen=True)
class QuantOp:
    """One quantizable op. ``inputs`` are the activation roots of its activation operands."""

    name: str
    kind: str  # "conv2d" | "dense" | "matmul" (activation x activation)
    var: str  # name of the binding var holding the op's output (unique in canonical main)
    inputs: tuple[str, ...]
    weight: str | None = None  # weight parameter name
    weight_transposed: bool = False  # dense: matmul(x, permute_dims(W)), W is [out, in]
    macs: int = 0

    @property
    def weight_channel_axis(self) -> int:
        """Output-channel axis of the weight *parameter* (per-channel scales live on it)."""
        if self.kind == "conv2d":
            return 0
        return 0 if self.weight_transposed else -1


@dataclass(frozen=True)
class QuantGroup:
    """One activation quantizer and the ops it feeds (op name, operand index)."""

    name: str
    root: str  # name of the Var whose value is quantized (a binding var or a model input)
    uses: tuple[tuple[str, int], ...]
    shape: tuple[int, ...] = ()

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(op for op, _ in self.uses))


@dataclass
class QuantGraph:
    ops: dict[str, QuantOp]
    groups: dict[str, QuantGroup]
    #: (binding var, op, reason) for ops that stay float because tvm_mpq cannot quantize them.
    unquantized: list[tuple[str, str, str]] = field(default_factory=list)

    def group_of(self, op_name_: str, operand: int = 0) -> QuantGroup:
        for g in self.groups.values():
            if (op_name_, operand) in g.uses:
                return g
        raise KeyError(f"no group feeds operand {operand} of {op_name_}")

    @property
    def roots(self) -> list[str]:
        return [g.root for g in self.groups.values()]


def module_name(weight_name: str) -> str:
    """``"features.0.0.weight"`` -> ``"features.0.0"`` (also ``_weight`` and ``.kernel``)."""
    for suffix in (".weight", "_weight", ".kernel"):
        if weight_name.endswith(suffix):
            return weight_name[: -len(suffix)]
    return weight_name


def analyze(fm: FloatModel) -> QuantGraph:
    """Find quantizable ops and quantizer groups of ``fm.main`` (bindings in graph order)."""
    func = fm.main
    bindings: dict[relax.Var, relax.Expr] = {}
    order: list[relax.Var] = []
    for blk in func.body.blocks:
        for b in blk.bindings:
            bindings[b.var] = b.value
            order.append(b.var)
    names = [v.name for v in order] + [v.name for v in func.params]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"canonical main has duplicate var names {sorted(dupes)[:5]}; rename them first")
    weights = {v for v in func.params[fm.num_inputs :]}

    def is_weight(expr) -> relax.Var | None:
        return expr if isinstance(expr, relax.Var) and expr in weights else None

    def root_of(expr) -> relax.Var | None:
        """Walk back through data-movement ops; None if the operand is a constant/weight."""
        while isinstance(expr, relax.Var) and op_name(bindings.get(expr)) in DATA_MOVEMENT_OPS:
            expr = bindings[expr].args[0]
        if not isinstance(expr, relax.Var) or expr in weights:
            return None
        return expr

    ops: dict[str, QuantOp] = {}
    unquantized: list[tuple[str, str, str]] = []
    uses: dict[relax.Var, list[tuple[str, int]]] = {}
    last_module = ""
    matmul_counter: dict[str, int] = {}

    for var in order:
        value = bindings[var]
        name = op_name(value)
        if name is None:
            continue
        short = name.split(".")[-1]
        if name == "relax.nn.conv2d":
            w = is_weight(value.args[1])
            a = value.attrs
            if w is None:
                unquantized.append((var.name, name, "weight is not a model parameter"))
                continue
            if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
                unquantized.append((var.name, name, f"layout {a.data_layout}/{a.kernel_layout} (need NCHW/OIHW)"))
                continue
            root = root_of(value.args[0])
            if root is None:
                unquantized.append((var.name, name, "input is not an activation"))
                continue
            out_shape = static_shape(var.ty)
            w_shape = fm.params[w.name].shape
            macs = int(np.prod(out_shape)) * int(np.prod(w_shape[1:]))
            op = QuantOp(module_name(w.name), "conv2d", var.name, (root.name,), w.name, False, macs)
            last_module = op.name
        elif name == "relax.matmul":
            lhs, rhs = value.args
            w, transposed = is_weight(rhs), False
            if w is None and op_name(bindings.get(rhs)) == "relax.permute_dims":
                inner = bindings[rhs].args[0]
                axes = bindings[rhs].attrs.axes
                if is_weight(inner) is not None and len(fm.params[inner.name].shape) == 2 and (
                    axes is None or [int(x) for x in axes] == [1, 0]
                ):
                    w, transposed = inner, True
            if w is not None:
                if len(fm.params[w.name].shape) != 2:
                    unquantized.append((var.name, name, "weight is not 2-D"))
                    continue
                root = root_of(lhs)
                if root is None:
                    unquantized.append((var.name, name, "input is not an activation"))
                    continue
                k = fm.params[w.name].shape[1 if transposed else 0]
                macs = int(np.prod(static_shape(var.ty))) * int(k)
                op = QuantOp(module_name(w.name), "dense", var.name, (root.name,), w.name, transposed, macs)
                last_module = op.name
            else:
                r0, r1 = root_of(lhs), root_of(rhs)
                if r0 is None or r1 is None:
                    unquantized.append((var.name, name, "an operand is a constant, not an activation"))
                    continue
                prefix = last_module.rsplit(".", 1)[0] if "." in last_module else ""
                i = matmul_counter.get(prefix, 0)
                matmul_counter[prefix] = i + 1
                k = static_shape(lhs.ty)[-1]
                macs = int(np.prod(static_shape(var.ty))) * int(k)
                op = QuantOp(f"{prefix}.matmul_{i}" if prefix else f"matmul_{i}", "matmul", var.name, (r0.name, r1.name), None, False, macs)
        else:
            if any(short == s for s in _NOT_YET_QUANTIZABLE):
                unquantized.append((var.name, name, "no integer realization for this op yet"))
            continue
        if op.name in ops:
            op = dataclasses.replace(op, name=f"{op.name}@{var.name}")
        ops[op.name] = op
        root_vars = [root_of(value.args[i]) for i in range(len(op.inputs))]
        for i, rv in enumerate(root_vars):
            uses.setdefault(rv, []).append((op.name, i))

    groups: dict[str, QuantGroup] = {}
    for root, use in uses.items():
        gname = _group_name(use, ops)
        groups[gname] = QuantGroup(gname, root.name, tuple(use), static_shape(root.ty))
    return QuantGraph(ops, groups, unquantized)


def _group_name(uses: list[tuple[str, int]], ops: dict[str, QuantOp]) -> str:
    """Readable group name from its consumers: "a.b.query" or "a.b.{query,key,value}"."""
    labels = []
    for op, operand in uses:
        label = op if (operand == 0) else f"{op}.rhs"
        if label not in labels:
            labels.append(label)
    if len(labels) == 1:
        return labels[0]
    prefix = os.path.commonprefix(labels)
    prefix = prefix[: prefix.rfind(".") + 1] if "." in prefix else ""
    return prefix + "{" + ",".join(lbl[len(prefix) :] for lbl in labels) + "}"
