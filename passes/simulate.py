"""SimulateQuantization: integer-exact fake quantization with runtime quantization parameters.

Each quantized activation operand becomes its *centered integer* value ``q - zp`` (held in float32),
each quantized weight is fed as its integer values, and the op's output is multiplied by one
per-channel ``output scale`` (activation scale x weight scale). This is the arithmetic of the
realized integer kernel -- same integers, same single float rescale -- so simulation and realization
make the same rounding decisions layer after layer (fake quant on dequantized values would drift
by float rounding and, through 50 requantizations, diverge).

Runtime inputs appended to ``main`` (one compiled module serves every configuration):
- ``"<group>.qparams"``: float32[5] = ``[inverse_scale, zero_point, qmin, qmax, enabled]``
  (``inverse_scale = float32(1) / scale``: quantization multiplies, see tvm_mpq.quant_math);
  ``enabled = 0`` passes the float activation through exactly (a select, not arithmetic);
- ``"<op>.output_scale"``: float32, broadcastable to the op's output channels (ones when float).
Weights stay the model's weight parameters; the caller feeds integers or floats per configuration.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_mpq.relax_utils import with_main

#: Layout of a group's runtime parameter vector.
QPARAM_FIELDS = ("inverse_scale", "zero_point", "qmin", "qmax", "enabled")


def output_scale_shape(op, out_ty) -> tuple[int, ...]:
    """Shape of an op's output-scale input: per output channel for conv/dense, scalar for matmul."""
    shape = [int(d) for d in out_ty.shape.values]
    if op.kind == "conv2d":
        return (1, shape[1], 1, 1)
    if op.kind == "dense":
        return (shape[-1],)
    return (1,)


def emit_centered_fake_quantize(bb: relax.BlockBuilder, x: relax.Expr, qp: relax.Expr) -> relax.Var:
    """``where(enabled, clip(round(x * inv_s) + zp, qmin, qmax) - zp, x)`` from the qp fields."""

    def field_(i):
        return bb.emit(relax.op.strided_slice(qp, axes=[0], begin=[i], end=[i + 1]))

    inv_s, zp, lo, hi, en = (field_(i) for i in range(len(QPARAM_FIELDS)))
    q = bb.emit(relax.op.add(relax.op.round(relax.op.multiply(x, inv_s)), zp))
    q = bb.emit(relax.op.subtract(relax.op.minimum(relax.op.maximum(q, lo), hi), zp))
    on = bb.emit(relax.op.greater(en, relax.const(0.5, "float32")))
    return bb.emit(relax.op.where(on, q, x))


@tvm.transform.module_pass(opt_level=0, name="SimulateQuantization")
class SimulateQuantization:
    """Simulate the quantization of the ops in ``graph`` (a tvm_mpq QuantGraph).

    ``main`` gains the ``"<group>.qparams"`` inputs (``graph.groups`` order), then the
    ``"<op>.output_scale"`` inputs (``graph.ops`` order).
    """

    def __init__(self, graph):
        self.graph = graph

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod["main"]
        graph = self.graph
        op_by_var = {op.var: op for op in graph.ops.values()}
        out_ty = {b.var.name: b.var.ty for blk in func.body.blocks for b in blk.bindings}
        qvars = {
            g.name: relax.Var(f"{g.name}.qparams", relax.TensorType((len(QPARAM_FIELDS),), "float32"))
            for g in graph.groups.values()
        }
        svars = {
            op.name: relax.Var(
                f"{op.name}.output_scale", relax.TensorType(output_scale_shape(op, out_ty[op.var]), "float32")
            )
            for op in graph.ops.values()
        }
        group_of_use = {use: g.name for g in graph.groups.values() for use in g.uses}

        @relax.expr_functor.mutator
        class _Simulate(relax.PyExprMutator):
            def __init__(self):
                super().__init__()
                self.memo = {}

            def visit_var_binding_(self, binding):
                op = op_by_var.get(binding.var.name)
                if op is None:
                    return super().visit_var_binding_(binding)
                call = binding.value
                bb = self.builder_
                args = [self.visit_expr(a) for a in call.args]
                for i in range(len(op.inputs)):
                    key = (args[i], group_of_use[(op.name, i)])
                    if key not in self.memo:
                        self.memo[key] = emit_centered_fake_quantize(bb, args[i], qvars[key[1]])
                    args[i] = self.memo[key]
                new_call = bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args, call.span))
                scaled = relax.op.multiply(new_call, svars[op.name])
                emit = bb.emit if isinstance(binding.var, relax.DataflowVar) else bb.emit_output
                self.set_var_remap(binding.var, emit(scaled, name_hint=binding.var.name))

        body = _Simulate().visit_expr(func.body)
        params = list(func.params) + list(qvars.values()) + list(svars.values())
        new_func = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
        return with_main(mod, new_func)
