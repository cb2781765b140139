"""Shared fixtures: the ../shared data (skipped when absent) and the `cuda` mark."""
import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LOFI_SHARED", REPO.parent / "shared"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """``../shared/data``; tests that use it skip in a user's clone, which has none."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (it exists only in the developers' work area)")
    return path


@pytest.fixture
def seed() -> int:
    """A fresh seed per test run, printed so a failure can be replayed with LOFI_TEST_SEED."""
    value = int(os.environ.get("LOFI_TEST_SEED", torch.seed() % (2**31)))
    print(f"LOFI_TEST_SEED={value}")
    return value
