"""Bring any supported model into one canonical float form.

The canonical form is a Relax ``main(inputs..., weights...)`` whose weight parameters are named
after the source model (torch parameter names, ONNX initializer names) plus a dict of their values.
Keeping weights as named parameters (rather than bound constants) is what gives quantizer groups
stable, readable names, and lets the simulation module take fake-quantized weights at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .errors import ModelImportError
from .relax_utils import op_name, remap_vars, static_shape, with_main


@dataclass
class FloatModel:
    """A float Relax model: ``mod["main"](inputs..., weights...)`` and the weights' values."""

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    num_inputs: int
    #: Source of the model, for reports ("torch", "exported_program", "onnx", "relax").
    source: str = "relax"
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> relax.Function:
        return self.mod["main"]

    @property
    def input_vars(self) -> list[relax.Var]:
        return list(self.main.params[: self.num_inputs])

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.input_vars]

    def input_signature(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, static shape, dtype) of each model input."""
        out = []
        for v in self.input_vars:
            out.append((v.name, static_shape(v.ty), str(v.ty.dtype)))
        return out

    def param_args(self) -> list[np.ndarray]:
        """Weight values in the order of ``main``'s weight parameters."""
        return [self.params[v.name] for v in self.main.params[self.num_inputs :]]


def import_model(model, example_inputs=None, input_names=None) -> FloatModel:
    """Import a torch Module (with example inputs), ExportedProgram, ONNX model/path or IRModule."""
    if isinstance(model, FloatModel):
        return model
    if isinstance(model, tvm.IRModule):
        return _from_relax(model)
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx"):
        return _from_onnx(os.fspath(model))
    mod_type = type(model).__module__ + "." + type(model).__name__
    if mod_type.startswith("onnx"):
        return _from_onnx(model)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        if isinstance(model, torch.export.ExportedProgram):
            return _from_exported_program(model, source="exported_program")
        if isinstance(model, torch.nn.Module):
            if example_inputs is None:
                raise ModelImportError(
                    "a torch.nn.Module needs example_inputs (a tuple of tensors in forward()'s "
                    "order) so it can be exported with torch.export"
                )
            if not isinstance(example_inputs, (tuple, list)):
                example_inputs = (example_inputs,)
            example_inputs = tuple(
                torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
                for x in example_inputs
            )
            try:
                ep = torch.export.export(model.eval(), example_inputs)
            except Exception as e:  # torch raises many types here
                raise ModelImportError(f"torch.export.export failed on {type(model).__name__}: {e}") from e
            return _from_exported_program(ep, source="torch")
    if isinstance(model, (str, os.PathLike)):
        raise ModelImportError(
            f"cannot import {os.fspath(model)!r}: give an .onnx path, an ONNX ModelProto, a "
            "torch.nn.Module, a torch.export.ExportedProgram or a Relax IRModule"
        )
    raise ModelImportError(
        f"cannot import a {mod_type}: give a torch.nn.Module (with example_inputs), a "
        "torch.export.ExportedProgram, an ONNX ModelProto or path, or a Relax IRModule"
    )


def _from_exported_program(ep, source: str) -> FloatModel:
    from tvm.relax.frontend.torch import from_exported_program

    try:
        mod = from_exported_program(ep, keep_params_as_input=True)
    except Exception as e:
        raise ModelImportError(f"Relax's torch frontend could not import the program: {e}") from e
    # Placeholder name ("p_features_0_0_weight") -> the torch parameter name ("features.0.0.weight").
    readable = dict(ep.graph_signature.inputs_to_parameters)
    readable.update(ep.graph_signature.inputs_to_buffers)
    fm = _detach(mod, source)
    return _rename_params(fm, readable)


def _from_onnx(model) -> FloatModel:
    try:
        import onnx
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError as e:
        raise ModelImportError("importing ONNX models needs the 'onnx' package: pip install onnx") from e
    if not hasattr(model, "graph"):
        try:
            model = onnx.load(model)
        except Exception as e:
            raise ModelImportError(f"could not read ONNX file {model!r}: {e}") from e
    try:
        mod = from_onnx(model, keep_params_in_input=True)
    except Exception as e:
        raise ModelImportError(f"Relax's ONNX frontend could not import the model: {e}") from e
    return _detach(mod, "onnx")


def _detach(mod: tvm.IRModule, source: str) -> FloatModel:
    func = mod["main"]
    num_inputs = int(func.attrs["num_input"]) if func.attrs and "num_input" in func.attrs else len(func.params)
    mod, params = relax.frontend.detach_params(mod)
    values = [p.numpy() for p in params.get("main", [])]
    weight_vars = func.params[num_inputs:]
    if len(values) != len(weight_vars):
        raise ModelImportError(
            f"the imported module has {len(weight_vars)} weight parameters but {len(values)} values"
        )
    fm = FloatModel(mod, {v.name: a for v, a in zip(weight_vars, values)}, num_inputs, source)
    return _lift_weight_constants(fm)


def _from_relax(mod: tvm.IRModule) -> FloatModel:
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise ModelImportError("the Relax IRModule has no 'main' function")
    return _detach(mod, "relax")


def _rename_params(fm: FloatModel, readable: dict[str, str]) -> FloatModel:
    """Rename weight parameters to their source names (kept unique)."""
    func = fm.main
    new_params, mapping, params, used = [], {}, {}, set()
    for i, v in enumerate(func.params):
        name = v.name if i < fm.num_inputs else readable.get(v.name, v.name)
        base, k = name, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        nv = relax.Var(name, v.ty)
        new_params.append(nv)
        mapping[v] = nv
        if i >= fm.num_inputs:
            params[name] = fm.params[v.name]
    new_func = relax.Function(
        new_params, remap_vars(func.body, mapping), func.ret_ty, func.is_pure, func.attrs, func.span
    )
    return FloatModel(with_main(fm.mod, new_func), params, fm.num_inputs, fm.source, fm.notes)


_WEIGHTED_OPS = ("relax.nn.conv2d", "relax.matmul")


def _lift_weight_constants(fm: FloatModel) -> FloatModel:
    """Turn constant weights of conv2d / matmul into named parameters ("conv2d_3.weight").

    A linear layer's constant sits behind a ``permute_dims`` (``matmul(x, permute_dims(W))``); it is
    lifted there so the analysis sees the usual transposed-dense pattern.
    """
    func = fm.main
    counters: dict[str, int] = {}
    lifted: list[tuple[relax.Var, np.ndarray]] = []

    def lift(const, kind):
        i = counters.get(kind, 0)
        counters[kind] = i + 1
        var = relax.Var(f"{kind}_{i}.weight", const.ty)
        lifted.append((var, const.value.numpy()))
        return var

    def is_weight_const(expr):
        return isinstance(expr, tvm.ir.GenericConst) and len(expr.value.shape) >= 2

    @relax.expr_functor.mutator
    class Lifter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _WEIGHTED_OPS and len(call.args) >= 2):
                return call
            w = call.args[1]
            kind = call.op.name.split(".")[-1]
            if is_weight_const(w):
                w = lift(w, kind)
            elif isinstance(w, relax.Var) and kind == "matmul":
                producer = self.lookup_binding(w)
                if op_name(producer) == "relax.permute_dims" and is_weight_const(producer.args[0]):
                    t = self.builder_.emit(
                        relax.Call(producer.op, [lift(producer.args[0], "linear")], producer.attrs)
                    )
                    w = t
            if w.same_as(call.args[1]):
                return call
            return relax.Call(call.op, [call.args[0], w, *call.args[2:]], call.attrs, call.ty_args, call.span)

    new_body = Lifter().visit_expr(func.body)
    if not lifted:
        return fm
    params = dict(fm.params)
    for v, a in lifted:
        params[v.name] = a
    new_func = relax.Function(
        list(func.params) + [v for v, _ in lifted], new_body, func.ret_ty, func.is_pure, func.attrs, func.span
    )
    note = f"lifted {len(lifted)} constant weights to named parameters"
    fm = FloatModel(with_main(fm.mod, new_func), params, fm.num_inputs, fm.source, fm.notes + [note])
    mod = relax.transform.DeadCodeElimination()(fm.mod)
    return FloatModel(mod, fm.params, fm.num_inputs, fm.source, fm.notes)
