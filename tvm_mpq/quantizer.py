"""The Quantizer: one float model, calibrated once, simulated or realized under any configuration.

It walks the pipeline of DESIGN §2 -- import, canonicalize, find groups, observe activations on the
calibration data -- and then serves the later steps: ``simulate`` (one compiled fake-quant module
for every configuration; what the search evaluates) and ``realize`` (integer kernels compiled for
the target). Encodings are computed lazily, once per (group, activation bits) and (op, weight bits).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm import relax

from tvm_mpq.passes.realize import RealizeQuantization
from tvm_mpq.passes.simulate import QPARAM_FIELDS, SimulateQuantization, output_scale_shape
from tvm_mpq.targets import host_target, parse_target, tuning
from tvm_mpq.targets.pipeline import build

from .calibration import ActivationObserver, Encoding, weight_encoding
from .canonicalize import canonicalize
from .config import FLOAT, Candidate, Config, as_config
from .errors import CalibrationError
from .frontend import FloatModel, import_model
from .graph import QuantGraph, analyze
from .plan import OpQuant, output_scale
from .quant_math import inverse_scale
from .relax_utils import with_main

_METHODS = ("mse", "minmax")
#: Widening of 16-bit activation ranges (see Quantizer.activation_encoding).
HEADROOM_16BIT = 1.5


def build_relax_module(mod: tvm.IRModule, target_info) -> relax.VMExecutable:
    """Compile with fusion and the project's template schedules for the target."""
    return build(mod, target_info)


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def flatten_outputs(out) -> list[np.ndarray]:
    """VM outputs (a tensor or nested tuples of tensors) as a flat list of numpy arrays."""
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    flat = []
    for o in out:
        flat.extend(flatten_outputs(o))
    return flat


class Quantizer:
    """Calibrate ``model`` once; simulate or realize any configuration of its quantizer groups.

    ``calibration``: an iterable of batches, each a tuple of arrays (numpy or torch) in the model's
    input order, or a bare array for a one-input model. ``method``: activation range method, "mse"
    (clipping that minimizes the quantization error on a sample of the activations) or "minmax";
    weights always use the per-channel MSE search unless ``weight_method="minmax"``.
    """

    def __init__(
        self,
        model,
        target=None,
        calibration: Iterable | None = None,
        example_inputs=None,
        method: str = "mse",
        weight_method: str = "mse",
        progress: bool = True,
    ):
        for m in (method, weight_method):
            if m not in _METHODS:
                raise CalibrationError(f"unknown calibration method {m!r}: use one of {_METHODS}")
        self.target = parse_target(target)
        # Calibration and simulation run here, whatever the deployment target is.
        self.host = host_target()
        self.method, self.weight_method, self.progress = method, weight_method, progress
        self.float_model: FloatModel = canonicalize(import_model(model, example_inputs))
        self.graph: QuantGraph = analyze(self.float_model)
        self._act_enc: dict[tuple[str, int], Encoding] = {}
        self._w_enc: dict[tuple[str, int], tuple[Encoding, np.ndarray]] = {}
        self._sim_vm = None
        self._sim_weights: dict[tuple[str, int | None], tvm.runtime.Tensor] = {}
        self.timings: dict[str, float] = {}
        if calibration is None:
            raise CalibrationError("calibration data is required: an iterable of input batches")
        self.observers = self._calibrate(calibration)

    # ----------------------------------------------------------------- inputs and calibration
    @property
    def group_names(self) -> list[str]:
        return list(self.graph.groups)

    def check_inputs(self, inputs, what: str = "input") -> list[list[np.ndarray]]:
        """Validate one batch against the model's inputs; split multiples of the model batch."""
        if not isinstance(inputs, (tuple, list)):
            inputs = (inputs,)
        sig = self.float_model.input_signature()
        if len(inputs) != len(sig):
            raise CalibrationError(
                f"{what} has {len(inputs)} array(s) but the model takes {len(sig)} input(s) "
                f"{[n for n, _, _ in sig]}"
            )
        arrays = []
        for a, (name, shape, dtype) in zip(inputs, sig):
            a = _to_numpy(a)
            if a.dtype != np.dtype(dtype):
                if np.issubdtype(a.dtype, np.floating) and np.issubdtype(np.dtype(dtype), np.floating):
                    a = a.astype(dtype)
                elif np.issubdtype(a.dtype, np.integer) and np.issubdtype(np.dtype(dtype), np.integer):
                    a = a.astype(dtype)
                else:
                    raise CalibrationError(f"{what}: input {name!r} has dtype {a.dtype}, the model expects {dtype}")
            if a.shape[1:] != shape[1:] or a.ndim != len(shape) or a.shape[0] % shape[0]:
                raise CalibrationError(
                    f"{what}: input {name!r} has shape {a.shape}, the model expects {shape} "
                    f"(a leading dimension that is a multiple of {shape[0]} is split into batches)"
                )
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                bad = int((~np.isfinite(a)).sum())
                raise CalibrationError(f"{what}: input {name!r} holds {bad} NaN/Inf value(s)")
            arrays.append(np.ascontiguousarray(a))
        n = arrays[0].shape[0] // sig[0][1][0]
        if any(a.shape[0] // s[0] != n for a, (_, s, _) in zip(arrays, sig)):
            raise CalibrationError(f"{what}: inputs disagree on the batch size")
        return [[a[i * s[0] : (i + 1) * s[0]] for a, (_, s, _) in zip(arrays, sig)] for i in range(n)]

    def _observer_module(self) -> tvm.IRModule:
        """The float model returning every group's root activation (the observation points)."""
        fm = self.float_model
        mod = relax.transform.ToNonDataflow()(fm.mod)
        func = mod["main"]
        by_name = {b.var.name: b.var for blk in func.body.blocks for b in blk.bindings}
        by_name.update({v.name: v for v in func.params})
        roots = [by_name[g.root] for g in self.graph.groups.values()]
        out = relax.Var("observed", relax.TupleType([r.ty for r in roots]))
        blocks = list(func.body.blocks)
        last = blocks[-1]
        blocks[-1] = relax.BindingBlock(list(last.bindings) + [relax.VarBinding(out, relax.Tuple(roots))])
        body = relax.SeqExpr(blocks, out)
        new_func = relax.Function(func.params, body, relax.TupleType([r.ty for r in roots]), func.is_pure, func.attrs)
        return with_main(mod, new_func)

    def _calibrate(self, calibration) -> dict[str, ActivationObserver]:
        t0 = time.perf_counter()
        observers = {g: ActivationObserver(g) for g in self.graph.groups}
        if not observers:
            self.timings["calibration_s"] = 0.0
            return observers
        vm = relax.VirtualMachine(build_relax_module(self._bind_float(self._observer_module()), self.host), tvm.cpu())
        count = 0
        try:
            total = len(calibration)
        except TypeError:
            total = None
        for i, batch in enumerate(tqdm(calibration, total=total, desc="calibration", disable=not self.progress)):
            for chunk in self.check_inputs(batch, what=f"calibration batch {i}"):
                outs = vm["main"](*[tvm.runtime.tensor(a) for a in chunk])
                for name, value in zip(observers, flatten_outputs(outs)):
                    observers[name].update(value)
                count += 1
        if count == 0:
            raise CalibrationError("calibration data is empty: give at least one input batch")
        self.num_calibration_batches = count
        self.timings["calibration_s"] = time.perf_counter() - t0
        return observers

    def _bind_float(self, mod: tvm.IRModule) -> tvm.IRModule:
        params = {k: tvm.runtime.tensor(v) for k, v in self.float_model.params.items()}
        return relax.transform.BindParams("main", params)(mod)

    # ----------------------------------------------------------------- encodings and plans
    def activation_encoding(self, group: str, bits: int) -> Encoding:
        """Range of a group's activation at ``bits``; ``method`` applies to 8 bits.

        At 16 bits rounding error is negligible and clipping is all that hurts: 16-bit ranges are
        the observed min/max widened by ``HEADROOM_16BIT`` against values the calibration data did
        not show. MobileNetV2 w16a16, 32 calibration / 128 held-out images: mse clipping 32 dB,
        minmax 45 dB, minmax x1.5 57 dB, x2 56 dB, x4 50 dB (benchmarks/range_headroom.py).
        """
        key = (group, bits)
        if key not in self._act_enc:
            if bits <= 8:
                enc = self.observers[group].encoding(bits, method=self.method)
            else:
                enc = self.observers[group].encoding(bits, method="minmax")
                enc = dataclasses.replace(enc, scale=float(np.float32(enc.scale * HEADROOM_16BIT)))
            self._act_enc[key] = enc
        return self._act_enc[key]

    def weight_quant(self, op_name: str, bits: int) -> tuple[Encoding, np.ndarray]:
        key = (op_name, bits)
        if key not in self._w_enc:
            op = self.graph.ops[op_name]
            w = self.float_model.params[op.weight]
            axis = op.weight_channel_axis % w.ndim
            method = self.weight_method if bits <= 8 else "minmax"  # as for 16-bit activations
            enc = weight_encoding(w, bits, axis=axis, method=method, name=op.weight)
            self._w_enc[key] = (enc, enc.quantize(w))
        return self._w_enc[key]

    def candidates_of(self, config: Config, op_name: str) -> list[Candidate]:
        return [config[self.graph.group_of(op_name, i).name] for i in range(len(self.graph.ops[op_name].inputs))]

    def plan(self, config: Config) -> dict[str, OpQuant]:
        """The OpQuant of every op under ``config`` (its weight bits come from operand 0's group)."""
        plan = {}
        for name, op in self.graph.ops.items():
            cands = self.candidates_of(config, name)
            act = tuple(
                None if c.is_float else self.activation_encoding(self.graph.group_of(name, i).name, c.activation_bits)
                for i, c in enumerate(cands)
            )
            if op.weight is None or cands[0].is_float:
                plan[name] = OpQuant(act if op.weight is None else (None,))
            else:
                enc, q = self.weight_quant(name, cands[0].weight_bits)
                plan[name] = OpQuant(act, enc, q)
        return plan

    def config(self, config=None) -> Config:
        return as_config(config, self.group_names)

    # ----------------------------------------------------------------- float and simulation
    def run_float(self, *inputs) -> list[np.ndarray]:
        return self.simulate(Config.uniform(self.group_names, FLOAT), *inputs)

    def _simulation_vm(self):
        if self._sim_vm is None:
            t0 = time.perf_counter()
            mod = SimulateQuantization(self.graph)(self.float_model.mod)
            self._sim_vm = relax.VirtualMachine(build_relax_module(mod, self.host), tvm.cpu())
            self.timings["simulation_compile_s"] = time.perf_counter() - t0
        return self._sim_vm

    def _sim_weight(self, param: str, op_name: str | None, bits: int | None) -> tvm.runtime.Tensor:
        """A weight input of the simulation: its integer values when quantized, else the floats."""
        key = (param, bits)
        if key not in self._sim_weights:
            value = self.float_model.params[param] if bits is None else self.weight_quant(op_name, bits)[1]
            self._sim_weights[key] = tvm.runtime.tensor(np.ascontiguousarray(value, dtype=np.float32))
        return self._sim_weights[key]

    def simulation_args(self, config: Config) -> list[tvm.runtime.Tensor]:
        """Weights, group qparams and op output scales for ``config``, in ``main``'s order."""
        plan = self.plan(config)
        weight_bits = {
            op.weight: (name, None if plan[name].weight is None else plan[name].weight.bits)
            for name, op in self.graph.ops.items()
            if op.weight is not None
        }
        args = []
        for v in self.float_model.main.params[self.float_model.num_inputs :]:
            op_name, bits = weight_bits.get(v.name, (None, None))
            args.append(self._sim_weight(v.name, op_name, bits))
        for g in self.graph.groups.values():
            c = config[g.name]
            if c.is_float:
                vec = [1.0, 0.0, 0.0, 0.0, 0.0]
            else:
                e = self.activation_encoding(g.name, c.activation_bits)
                vec = [inverse_scale(e.scale), float(e.zero_point), float(e.qmin), float(e.qmax), 1.0]
            assert len(vec) == len(QPARAM_FIELDS)
            args.append(tvm.runtime.tensor(np.asarray(vec, dtype=np.float32)))
        out_ty = {b.var.name: b.var.ty for blk in self.float_model.main.body.blocks for b in blk.bindings}
        for name, op in self.graph.ops.items():
            shape = output_scale_shape(op, out_ty[op.var])
            scale = output_scale(plan[name].act, plan[name].weight).reshape(-1)
            value = np.broadcast_to(scale, (int(np.prod(shape)),)).reshape(shape)
            args.append(tvm.runtime.tensor(np.ascontiguousarray(value, dtype=np.float32)))
        return args

    def simulate(self, config, *inputs) -> list[np.ndarray]:
        """Outputs of the fake-quantized model under ``config`` (flat list of arrays)."""
        config = self.config(config)
        vm = self._simulation_vm()
        qargs = self.simulation_args(config)
        outs = []
        for chunk in self.check_inputs(inputs):
            outs.append(flatten_outputs(vm["main"](*[tvm.runtime.tensor(a) for a in chunk], *qargs)))
        return [np.concatenate(parts) for parts in zip(*outs)]

    # ----------------------------------------------------------------- realization
    def realize(self, config=None, tune=False, tuning_dir=None):
        """Compile ``config`` into a module with real integer kernels for the target.

        ``tune``: False (default: template schedules), True or a number of trials per kernel, or a
        dict of ``tvm_mpq.targets.tuning.tune_module`` options -- tune the module's kernels with
        MetaSchedule first, recording into ``tuning_dir`` (default: a per-target folder under
        ``~/.cache/tvm_mpq/tuning``); kernels already tuned there are not tuned again. A
        ``tuning_dir`` without ``tune`` applies that database's kernels and tunes nothing. The
        result's ``.tuning`` says what was tuned (None without tuning)."""
        from .result import QuantizedModule

        config = self.config(config)
        tune_opts = tuning.tune_options(tune)
        if tune_opts is not None:
            tuning.check_tunable_here(self.target)
        elif tuning_dir is not None:
            tuning.check_database(tuning_dir)
        t0 = time.perf_counter()
        realize = RealizeQuantization(self.graph, self.plan(config))
        mod = realize(self.float_model.mod)
        mod = self._bind_float(mod)
        summary = None
        if tune_opts is not None:
            summary = tuning.tune_module(mod, self.target, tuning_dir=tuning_dir, progress=self.progress, **tune_opts)
            tuning_dir = summary.tuning_dir
        exe = build(mod, self.target, tuning_dir=tuning_dir)
        compile_s = time.perf_counter() - t0
        module = QuantizedModule(self, config, exe, mod, list(realize.report), compile_s)
        module.tuning = summary
        return module
