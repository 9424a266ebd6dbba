"""Small Relax helpers shared by the frontend and the passes (this TVM renamed many APIs)."""

from __future__ import annotations

import tvm
from tvm import relax


def static_shape(ty) -> tuple[int, ...]:
    """The static shape of a TensorType, or a clear error for dynamic shapes."""
    if ty.shape is None:
        raise ValueError(f"tensor type {ty} has no static shape")
    return tuple(int(d) for d in ty.shape.values)


def remap_vars(expr: relax.Expr, mapping: dict) -> relax.Expr:
    """Replace free uses of the Vars in ``mapping`` (the Relax counterpart of a substitution)."""

    @relax.expr_functor.mutator
    class _Remap(relax.PyExprMutator):
        def visit_var_(self, op):
            return mapping.get(op, op)

        def visit_dataflow_var_(self, op):
            return mapping.get(op, op)

    return _Remap().visit_expr(expr)


def with_main(mod: tvm.IRModule, func: relax.Function) -> tvm.IRModule:
    """A copy of ``mod`` with ``main`` replaced."""
    out = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
    out["main"] = func
    return out


def op_name(expr) -> str | None:
    """``"relax.nn.conv2d"`` for a call to a Relax op, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def uniquify_binding_names(func: relax.Function) -> relax.Function:
    """Rename bindings so that every var of ``func`` has a distinct name (names key our passes)."""
    taken = {v.name for v in func.params}
    seen: set[str] = set()
    needs = False
    for blk in func.body.blocks:
        for b in blk.bindings:
            if b.var.name in seen or b.var.name in taken:
                needs = True
            seen.add(b.var.name)
    if not needs:
        return func

    @relax.expr_functor.mutator
    class _Rename(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            value = self.visit_expr(binding.value)
            name, k = binding.var.name, 1
            while name in taken:
                name, k = f"{binding.var.name}_{k}", k + 1
            taken.add(name)
            emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) else self.builder_.emit_output
            self.set_var_remap(binding.var, emit(value, name_hint=name))

    body = _Rename().visit_expr(func.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
