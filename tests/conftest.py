"""Shared test options and fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gate_harness import Backend

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.yaml from the current rendering instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to rewrite golden files (`make golden`)."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """A model stand-in for the gate on a loopback port (see tests/gate_harness.py)."""
    b = Backend()
    await b.start()
    yield b
    await b.stop()
