"""The ResNet-18-shaped benchmark network (tvm_mpq.models.resnet18): torchvision's architecture
and names, deterministic seeded weights with sane BN statistics, and a realized w8a8 module that
tracks the float one and compiles in under a minute (its 512-channel 3x3 convs are the largest
int8 kernels of the benchmarks). Small 64x64 inputs keep the test short; the network is fully
convolutional up to the global average pool, so every layer and kernel shape class is exercised.
"""

import numpy as np
import pytest
import torch

import tvm_mpq
from tvm_mpq.calibration import sqnr_db
from tvm_mpq.models.resnet18 import load_resnet18

SIZE = 64


@pytest.fixture(scope="module")
def resnet18():
    return load_resnet18(seed=0, bn_images=4, image_size=SIZE)


def test_torchvision_names_and_size(resnet18):
    state = resnet18.state_dict()
    # torchvision's resnet18: 122 state entries, 11,689,512 parameters
    assert len(state) == 122
    assert sum(p.numel() for p in resnet18.parameters()) == 11_689_512
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_mean", "layer4.1.bn2.bias", "fc.weight"):
        assert key in state, key
    assert "layer1.0.downsample.0.weight" not in state  # no projection where shapes match


def test_seeded_and_bn_statistics_sane(resnet18):
    again = load_resnet18(seed=0, bn_images=4, image_size=SIZE)
    assert all(torch.equal(a, b) for a, b in zip(resnet18.state_dict().values(), again.state_dict().values()))
    other = load_resnet18(seed=1, bn_images=4, image_size=SIZE)
    assert not torch.equal(resnet18.fc.weight, other.fc.weight)
    stds = {}
    hooks = [getattr(resnet18, f"layer{i}").register_forward_hook(
        lambda _m, _i, out, k=i: stds.__setitem__(k, float(out.std()))) for i in range(1, 5)]
    try:
        with torch.no_grad():
            resnet18(torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(7)))
    finally:
        for h in hooks:
            h.remove()
    # re-estimated BN keeps every stage's activations at a trained network's scale
    assert all(0.3 < s < 5.0 for s in stds.values()), stds


def test_realized_w8a8_tracks_float(resnet18):
    x = np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype("float32")
    q = tvm_mpq.Quantizer(resnet18, None, [x[:2]], example_inputs=(x[:1],), progress=False)
    assert len(q.graph.ops) == 21 and q.graph.unquantized == []  # 20 convs + fc
    assert "conv1" in q.group_names and "fc" in q.group_names
    ref = q.run_float(x[2:])[0]
    with torch.no_grad():
        np.testing.assert_allclose(ref, resnet18(torch.from_numpy(x[2:])).numpy(), rtol=1e-3, atol=1e-3)
    module = q.realize("w8a8")
    assert module.compile_seconds < 60.0, module.compile_seconds
    assert sqnr_db(ref, module.run(x[2:])) >= 20.0
