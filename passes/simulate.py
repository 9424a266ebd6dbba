"""SimulateQuantization: insert fake quantize->dequantize on every quantized activation operand.

The quantization parameters are *runtime inputs*, one ``float32[5]`` vector per quantizer group,
``[scale, zero_point, qmin, qmax, enabled]``, appended to ``main``'s parameters. One compiled
module therefore serves every configuration -- the search only changes input values, never
recompiles. ``enabled = 0`` passes the float value through exactly (a select, not arithmetic).

Weights are not touched here: they are already parameters of the canonical model, and the caller
feeds them fake-quantized on the host with the same numpy arithmetic that produces the realized
integer weights (tvm_mpq.quant_math), so simulation and realization cannot drift apart.
"""

from __future__ import annotations

import tvm
from tvm import relax

#: Layout of a group's runtime parameter vector.
QPARAM_FIELDS = ("scale", "zero_point", "qmin", "qmax", "enabled")


def emit_fake_quantize(bb: relax.BlockBuilder, x: relax.Expr, qp: relax.Expr) -> relax.Var:
    """``where(enabled, (clip(round(x / s) + zp, qmin, qmax) - zp) * s, x)`` with qp fields."""

    def field_(i):
        return bb.emit(relax.op.strided_slice(qp, axes=[0], begin=[i], end=[i + 1]))

    s, zp, lo, hi, en = (field_(i) for i in range(len(QPARAM_FIELDS)))
    q = bb.emit(relax.op.add(relax.op.round(relax.op.divide(x, s)), zp))
    q = bb.emit(relax.op.minimum(relax.op.maximum(q, lo), hi))
    dq = bb.emit(relax.op.multiply(relax.op.subtract(q, zp), s))
    on = bb.emit(relax.op.greater(en, relax.const(0.5, "float32")))
    return bb.emit(relax.op.where(on, dq, x))


@tvm.transform.module_pass(opt_level=0, name="SimulateQuantization")
class SimulateQuantization:
    """Fake-quantize the activation operands of the ops in ``graph`` (a tvm_mpq QuantGraph).

    ``main`` gains one parameter per group, named ``"<group>.qparams"``, in ``graph.groups`` order.
    """

    def __init__(self, graph):
        self.graph = graph

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod["main"]
        graph = self.graph
        op_by_var = {op.var: op for op in graph.ops.values()}
        qvars = {
            g.name: relax.Var(f"{g.name}.qparams", relax.TensorType((len(QPARAM_FIELDS),), "float32"))
            for g in graph.groups.values()
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
                args = [self.visit_expr(a) for a in call.args]
                for i in range(len(op.inputs)):
                    key = (args[i], group_of_use[(op.name, i)])
                    if key not in self.memo:
                        self.memo[key] = emit_fake_quantize(self.builder_, args[i], qvars[key[1]])
                    args[i] = self.memo[key]
                new_call = relax.Call(call.op, args, call.attrs, call.ty_args, call.span)
                emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) else self.builder_.emit_output
                self.set_var_remap(binding.var, emit(new_call, name_hint=binding.var.name))

        body = _Simulate().visit_expr(func.body)
        params = list(func.params) + list(qvars.values())
        new_func = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
        out = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
        out["main"] = new_func
        return out
