"""Helpers for tests/test_search.py: a tiny CNN with a deliberate activation outlier, and a child
process that runs phase 1 slowly so the test can kill it mid-way.

    python tests/search_child.py RESULTS_DIR DELAY_S

The model: conv1 -> ReLU -> conv2 -> ReLU -> conv3 (1x1) -> ReLU -> flatten -> fc (no pooling
that would average the quantization noise away). Output channel 0 of
conv1 is scaled by ``outlier`` and conv2's weights reading that channel by 1/outlier: the float
function is unchanged (ReLU is positively homogeneous), but the activation feeding conv2 has one
channel ``outlier`` times larger than the others -- a per-tensor 8-bit quantizer of it crushes the
other channels, so group "conv2" is the fragile one. Weights come from a seeded numpy generator, so
the child and the test build bit-identical models.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

INPUT_SHAPE = (2, 3, 9, 9)


class FragileCNN(torch.nn.Module):
    def __init__(self, outlier: float = 100.0, seed: int = 0):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8 * 9 * 9, 4)
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 8
                p.copy_(torch.from_numpy((rng.standard_normal(p.shape) / np.sqrt(fan_in)).astype(np.float32)))
            self.conv1.bias.abs_()  # keep channel 0 alive after the ReLU
            self.conv1.weight[0] *= outlier
            self.conv1.bias[0] *= outlier
            self.conv2.weight[:, 0] /= outlier

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        y = torch.relu(self.conv3(y))
        return self.fc(y.flatten(1))


def calibration(n: int = 3, seed: int = 1) -> list[tuple[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(INPUT_SHAPE).astype(np.float32),) for _ in range(n)]


def build_quantizer(outlier: float = 100.0, seed: int = 0):
    import tvm_mpq

    cal = calibration()
    model = FragileCNN(outlier, seed).eval()
    return tvm_mpq.Quantizer(model, None, cal, (torch.from_numpy(cal[0][0]),), progress=False)


def main(results_dir: str, delay_s: float) -> None:
    from tvm_mpq.cache import ResultsCache, fingerprint
    from tvm_mpq.config import DEFAULT_CANDIDATES
    from tvm_mpq.sensitivity import phase1

    q = build_quantizer()
    cal = calibration()
    simulate = q.simulate

    def slow_simulate(config, *inputs):
        time.sleep(delay_s)
        return simulate(config, *inputs)

    q.simulate = slow_simulate
    cache = ResultsCache(results_dir, fingerprint(q, DEFAULT_CANDIDATES, cal))
    print("PHASE1-STARTED", flush=True)
    phase1(q, cal, DEFAULT_CANDIDATES, cache=cache, progress=False)
    print("PHASE1-DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
