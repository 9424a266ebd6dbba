"""Fixtures shared by the search tests: the tiny model of tests/search_child.py, whose
``fragile`` conv is far more sensitive than the rest, and its calibration batches."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def fragile():
    import search_child

    return search_child.build_quantizer()


@pytest.fixture(scope="module")
def cal():
    import search_child

    return search_child.calibration()
