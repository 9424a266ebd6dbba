"""RealizeQuantization: rewrite quantized ops into integer Relax (real integer kernels).

For each op of the plan: quantize its activation operand(s) (uint8 at 8 bits, int16 at 16 bits),
run an integer conv2d / matmul with an int32 (or, where the layer's integer weights could overflow
it, int64) accumulator, subtract the zero-point term, and dequantize with one per-channel scale.
The float epilogue that follows (bias, ReLU6, residual add) and the next layer's quantize then fuse
into the kernel under FuseOps: that is the requantization to the next layer's input.

Weight parameters of realized ops are replaced by integer constants (int4 packed two per byte) and
become unused; bind the remaining (float) parameters afterwards with ``relax.transform.BindParams``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_mpq.plan import output_scale
from tvm_mpq.quant_math import pack_int4
from tvm_mpq.relax_utils import with_main

from . import integer_ops as iops


def _act_dtype(enc) -> str:
    return "uint8" if enc.qmin >= 0 else "int16"


def _act_max_abs(enc) -> int:
    """Largest magnitude of the stored or the centered integer activation."""
    zp = int(enc.zero_point)
    return max(abs(enc.qmin), abs(enc.qmax), abs(enc.qmax - zp), abs(zp - enc.qmin))


def _weight_const(q2d: np.ndarray, bits: int):
    """An integer weight constant: int4 packed along the last axis, else int8 / int16."""
    if bits == 4:
        return relax.const(pack_int4(q2d), "uint8")
    dtype = "int8" if bits <= 8 else "int16"
    return relax.const(q2d.astype(dtype), dtype)


def _clamp_of(value):
    """``(x, lo, hi)`` when ``value`` is ``clip(x, lo, hi)`` or ``relu(x)`` of a float32 tensor, else None."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return None
    x = value.args[0]
    if str(getattr(x.ty, "dtype", "")) != "float32":
        return None
    if value.op.name == "relax.nn.relu":
        return x, 0.0, float("inf")
    if value.op.name == "relax.clip":
        bounds = []
        for a in value.args[1:3]:
            v = a if isinstance(a, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) else getattr(a, "value", None)
            if not isinstance(v, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
                return None
            bounds.append(float(v.value))
        return x, bounds[0], bounds[1]
    return None


@tvm.transform.module_pass(opt_level=0, name="RealizeQuantization")
class RealizeQuantization:
    """Realize ``plan`` (op name -> tvm_mpq.plan.OpQuant) over the ops of ``graph``.

    ``report`` is filled with one dict per realized op (kernel dtypes, accumulator, packing).
    """

    def __init__(self, graph, plan):
        self.graph = graph
        self.plan = plan
        self.report: list[dict] = []

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        func = mod["main"]
        ops_by_var = {op.var: op for op in self.graph.ops.values() if op.name in self.plan}
        plan, report = self.plan, self.report
        report.clear()

        @relax.expr_functor.mutator
        class _Realize(relax.PyExprMutator):
            def __init__(self, mod):
                super().__init__(mod)
                self.memo = {}

            def quantized(self, x, enc):
                key = (x, enc)
                if key not in self.memo:
                    src, qmin, qmax = x, enc.qmin, enc.qmax
                    clamp = _clamp_of(self.lookup_binding(x)) if isinstance(x, relax.Var) else None
                    if clamp is not None:
                        bounds = iops.clamp_bounds_through_quantize(
                            clamp[1], clamp[2], enc.scale, int(enc.zero_point), qmin, qmax
                        )
                        if bounds is not None:  # the ReLU / clip merges into the quantize's clip
                            src, (qmin, qmax) = clamp[0], bounds
                    self.memo[key] = iops.emit_quantize(
                        self.builder_, src, enc.scale, int(enc.zero_point), qmin, qmax, _act_dtype(enc)
                    )
                return self.memo[key]

            def visit_var_binding_(self, binding):
                op = ops_by_var.get(binding.var.name)
                oq = plan.get(op.name) if op is not None else None
                if oq is None or oq.is_float:
                    return super().visit_var_binding_(binding)
                call = binding.value
                args = [self.visit_expr(a) for a in call.args]
                bb = self.builder_
                if op.kind == "matmul":
                    out, info = self.realize_matmul(op, oq, args, call)
                elif op.kind == "conv2d":
                    out, info = self.realize_conv2d(op, oq, args, call)
                else:
                    out, info = self.realize_dense(op, oq, args, call)
                report.append({"op": op.name, "kind": op.kind, **info})
                emit = bb.emit if isinstance(binding.var, relax.DataflowVar) else bb.emit_output
                self.set_var_remap(binding.var, emit(out, name_hint=binding.var.name))

            def realize_conv2d(self, op, oq, args, call):
                enc, wenc = oq.act[0], oq.weight
                wq = np.asarray(oq.weight_q)
                o = wq.shape[0]
                w2d = wq.reshape(o, -1)
                acc_dtype = iops.accumulator_dtype(_act_max_abs(enc), np.abs(w2d).sum(1).max())
                xq = self.quantized(args[0], enc)
                const = _weight_const(w2d if wenc.bits == 4 else wq, wenc.bits)
                as_float = (
                    wenc.bits <= 8 and enc.bits <= 8
                    and iops.float_conv_pays(wq.shape, int(call.attrs.groups))
                    and iops.exact_in_float32(_act_max_abs(enc), np.abs(w2d).sum(1).max())
                )  # fmt: skip
                # exact float32 sums stay float32 through the zero-point correction: no float ->
                # int -> float trip (two conversions per vector) in the epilogue
                sum_dtype = "float32" if as_float else acc_dtype
                acc = iops.emit_conv2d(
                    self.builder_, xq, const, call.attrs, int(enc.zero_point), wenc.bits, wq.shape, sum_dtype,
                    float_weight=wq.astype(np.float32) if as_float else None,
                )
                shape = (1, o, 1, 1)
                acc = iops.emit_zero_point_correction(self.builder_, acc, int(enc.zero_point), w2d.sum(1), shape, sum_dtype)
                scale = output_scale(oq.act, wenc).reshape(shape)
                out = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))
                return out, self.info(enc, wenc, acc_dtype)

            def realize_dense(self, op, oq, args, call):
                enc, wenc = oq.act[0], oq.weight
                wq = np.asarray(oq.weight_q)
                w_nk = wq if op.weight_transposed else wq.T  # [N, K]
                n, k = w_nk.shape
                acc_dtype = iops.accumulator_dtype(_act_max_abs(enc), np.abs(w_nk).sum(1).max())
                xq = self.quantized(args[0], enc)
                const = _weight_const(w_nk if wenc.bits == 4 else np.ascontiguousarray(w_nk.T), wenc.bits)
                acc = iops.emit_dense(self.builder_, xq, const, wenc.bits, k, n, acc_dtype)
                acc = iops.emit_zero_point_correction(self.builder_, acc, int(enc.zero_point), w_nk.sum(1), (n,), acc_dtype)
                scale = output_scale(oq.act, wenc)
                out = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))
                return out, self.info(enc, wenc, acc_dtype)

            def realize_matmul(self, op, oq, args, call):
                bb = self.builder_
                ops_ = []
                for x, enc in zip(args, oq.act):
                    if enc is None:
                        ops_.append(None)
                    else:
                        ops_.append(iops.emit_centered(bb, self.quantized(x, enc), int(enc.zero_point)))
                scale = output_scale(oq.act, None).reshape(1)
                if any(c is None for c in ops_):
                    # One operand float: a float matmul of the centered integers and the float
                    # operand, rescaled once (the arithmetic the simulation does).
                    vals = [x if c is None else bb.emit(relax.op.astype(c, "float32")) for x, c in zip(args, ops_)]
                    mm = bb.emit(relax.op.matmul(vals[0], vals[1], out_dtype="float32"))
                    return relax.op.multiply(mm, relax.const(scale, "float32")), {
                        "activation": "/".join("float" if e is None else _act_dtype(e) for e in oq.act),
                        "weight": "-", "accumulator": "float32",
                    }
                k = int(args[0].ty.shape.values[-1])
                acc_dtype = iops.accumulator_dtype(_act_max_abs(oq.act[0]), k * _act_max_abs(oq.act[1]))
                acc = bb.emit(relax.op.matmul(ops_[0], ops_[1], out_dtype=acc_dtype))
                out = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))
                return out, {
                    "activation": "int16 (centered)", "weight": "int16 (centered activation)",
                    "accumulator": acc_dtype,
                }

            @staticmethod
            def info(enc, wenc, acc_dtype):
                wdesc = {4: "int4 (packed uint8)", 7: "int7 (int8)", 8: "int8"}.get(wenc.bits, "int16")
                return {"activation": _act_dtype(enc), "weight": wdesc, "accumulator": acc_dtype}

        # A copy: the builder adds the int4 PrimFuncs (emit_te) to the module it is given, in place.
        mutator = _Realize(tvm.IRModule(dict(mod.functions_items())))
        body = mutator.visit_expr(func.body)
        new_func = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
        return with_main(mutator.builder_.get(), new_func)
