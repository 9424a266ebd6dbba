"""tutorials/search_mobilenet.py runs as written, at tiny sizes: the accuracy-budget search on real
MobileNetV2 gives a realized module that meets the budget on its evaluation images and costs less
than all-w16a16. Skips (saying why) without the weights package or the shared ImageNet sample."""

import pathlib
import runpy

import pytest

pytest.importorskip("torch")

import tvm_mpq  # noqa: E402

TUTORIAL = pathlib.Path(__file__).resolve().parent.parent / "tutorials" / "search_mobilenet.py"


def test_search_mobilenet_tutorial(tmp_path):
    tutorial = runpy.run_path(str(TUTORIAL))
    try:
        tutorial["load"](4, 16)
    except (tvm_mpq.ModelUnavailable, FileNotFoundError) as e:
        pytest.skip(f"tutorial needs the MobileNetV2 weights and ../shared/data: {e}")
    # 4 calibration (= phase-1) images, 16 evaluation images: a few minutes on two cores.
    out = tutorial["main"](num_calib=4, num_eval=16, allowed_drop=1.0, results_dir=tmp_path / "search")
    assert out["realized_top1"] >= out["float_top1"] - out["allowed_drop"], out
    assert out["relative_bops"] < 1.0, out  # cheaper than every group at w16a16
    result = out["search"]
    assert result.feasible and result.chosen is not None and result.chosen > 0
    assert result.evaluations <= 2 + len(result.curve).bit_length() + 1  # binary search: O(log N)
    assert (tmp_path / "search" / "sensitivity.json").is_file()
    assert (tmp_path / "search" / "chosen_config.json").is_file()
