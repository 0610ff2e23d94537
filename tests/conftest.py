"""Shared fixtures; puts this folder on sys.path so tests can ``from models import ...``."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import random_input  # noqa: E402


def _kept_logger_state():
    """The CLI points the ``onnx_eprune`` logger at the current sys.stderr (capsys's
    stream in a test); put it back afterwards so later tests do not log to a closed stream
    (and caplog still sees the records)."""
    log = logging.getLogger("onnx_eprune")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


# per test, and per module: a module fixture that runs the CLI sets the logger before the
# first test's own restore saves it
_restore_package_logger = pytest.fixture(autouse=True)(_kept_logger_state)
_restore_package_logger_per_module = pytest.fixture(autouse=True, scope="module")(_kept_logger_state)


@pytest.fixture(scope="session")
def calib() -> np.ndarray:
    """64 calibration samples for every builder in models.py."""
    return random_input(64, seed=1)


@pytest.fixture(scope="session")
def test_x() -> np.ndarray:
    """Held-out inputs, different from the calibration samples."""
    return random_input(16, seed=2)
