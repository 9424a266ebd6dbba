"""The tutorials run as written (they are documentation that must not rot)."""

import pathlib
import runpy

import numpy as np

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"


def test_passes_in_your_pipeline():
    out = runpy.run_path(str(TUTORIALS / "passes_in_your_pipeline.py"))["main"]()
    assert out.shape == (4, 10) and np.isfinite(out).all()
