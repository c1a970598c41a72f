"""Reusable contract suites that every backend of one kind must pass, and the small helpers they share.

pytest-asyncio is not a dependency: async tests are plain functions that run their body with ``anyio.run``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from pydantic import ValidationError


def async_test(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Turn ``async def test_x(fixtures...)`` into a sync test; pytest still sees the fixture arguments."""

    @functools.wraps(fn)  # keeps the signature (via __wrapped__) so fixtures are injected
    def run(*args: Any, **kwargs: Any) -> Any:
        return anyio.run(functools.partial(fn, *args, **kwargs))

    return run


async def eventually(predicate: Callable[[], Any], *, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` is true, yielding to the loop between checks; fail after ``timeout`` seconds."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def assert_registers(hook: Callable[[], Any], spec_type: type, name: str, backend: type, config_model: type) -> None:
    """The registration ``hook`` yields exactly one ``spec_type`` named ``name``, and the config refuses typos."""
    (spec,) = list(hook())
    assert isinstance(spec, spec_type)
    assert (spec.name, spec.backend, spec.config_model) == (name, backend, config_model)
    with pytest.raises(ValidationError):
        config_model(no_such_option_typo=1)
