"""Tutorial: tvm_mpq's passes inside your own TVM pipeline.

tvm_mpq.compile() is one call, but every step is a plain piece you can drop into a pipeline of
your own: here a small torch CNN goes through torch.export and Relax, tvm_mpq calibrates it and
picks a per-group configuration, and *your* ``tvm.transform.Sequential`` applies tvm_mpq's
``RealizeQuantization`` pass next to TVM's own passes before ``tvm.compile``.

Run:  python tutorials/passes_in_your_pipeline.py
"""

import numpy as np
import torch
import tvm
from tvm import relax

import tvm_mpq
from tvm_mpq.calibration import sqnr_db
from tvm_mpq.passes.realize import RealizeQuantization
from tvm_mpq.passes.simulate import SimulateQuantization
from tvm_mpq.targets import host_target
from tvm_mpq.targets.pipeline import relax_pipeline


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        self.dw = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pw = torch.nn.Conv2d(16, 24, 1)
        self.head = torch.nn.Linear(24, 10)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn(self.stem(x)))
        x = torch.nn.functional.relu6(self.dw(x))
        x = self.pw(x)
        return self.head(x.mean((2, 3)))


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = SmallNet().eval()
    example = rng.normal(size=(4, 3, 32, 32)).astype("float32")
    calibration = [rng.normal(size=(4, 3, 32, 32)).astype("float32") for _ in range(4)]

    # 1. Import + calibrate once. The Quantizer holds the canonical float module (weights as named
    #    parameters, batch norm folded), its quantizer groups and the activation statistics.
    q = tvm_mpq.Quantizer(model, target=None, calibration=calibration, example_inputs=(example,))
    print("quantizer groups:", q.group_names)

    # 2. A configuration in your terms: the stem at w8a16, the depthwise conv in float, the rest w8a8.
    config = tvm_mpq.Config.uniform(q.group_names, "w8a8").with_(stem="w8a16", dw="float")
    plan = q.plan(config)  # op name -> OpQuant (encodings + integer weights)

    # 3. Your own pipeline: tvm_mpq's pass, then TVM's, then tvm.compile with fusion.
    params = {k: tvm.runtime.tensor(v) for k, v in q.float_model.params.items()}
    my_pipeline = tvm.transform.Sequential(
        [
            RealizeQuantization(q.graph, plan),
            relax.transform.BindParams("main", params),
            relax.transform.DeadCodeElimination(),
        ]
    )
    realized = my_pipeline(q.float_model.mod)
    # tvm_mpq's CPU pipeline is TVM's cpu_generic one plus template schedules (parallel + vector
    # loops); relax.backend.cpu_generic.get_default_pipeline(target) works too, just slower.
    host = host_target()
    exe = tvm.compile(realized, target=host.target, relax_pipeline=relax_pipeline(host))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(example))[0].numpy()

    # 4. The same configuration through the simulation pass (one module for every configuration)
    #    and through tvm_mpq.compile agree with this hand-built module.
    simulated = q.simulate(config, example)[0]
    assert isinstance(SimulateQuantization(q.graph)(q.float_model.mod), tvm.IRModule)
    reference = q.run_float(example)[0]
    print(f"SQNR vs float: {sqnr_db(reference, out):.1f} dB; realized vs simulated: {sqnr_db(simulated, out):.1f} dB")
    compiled = q.realize(config)
    np.testing.assert_array_equal(compiled.run(example), out)
    print(compiled.summary())
    return out


if __name__ == "__main__":
    main()
