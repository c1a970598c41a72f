"""The builtin auth provider on a real sqlite registry: tokens, and the short cache of looked-up tokens."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from mcp_agent_cloud.hookspecs.types import PluginContext
from mcp_agent_cloud.plugins import builtin_auth
from mcp_agent_cloud.plugins.builtin_auth import BuiltinAuth, BuiltinAuthConfig
from tests.contracts import async_test
from tests.plugins.test_sqlite import open_sqlite


class CountingRegistry:
    """The real registry, counting token lookups (what the cache is there to save)."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self.lookups = 0

    async def find_token(self, token_hash):
        self.lookups += 1
        return await self.registry.find_token(token_hash)

    def __getattr__(self, name):
        return getattr(self.registry, name)


def request(token: str):
    return SimpleNamespace(headers={"authorization": f"Bearer {token}"})


async def provider(tmp_path: Path, **options) -> tuple[BuiltinAuth, CountingRegistry]:
    registry = CountingRegistry(await open_sqlite(tmp_path))
    return BuiltinAuth(BuiltinAuthConfig(**options), PluginContext(data_dir=tmp_path, registry=registry)), registry


@async_test
async def test_a_token_is_read_once_per_cache_window(tmp_path: Path, monkeypatch) -> None:
    auth, registry = await provider(tmp_path, cache_seconds=2)
    token, record = await auth.issue_token(org="acme", subject="ann", roles=["developer"])
    now = [1000.0]
    monkeypatch.setattr(builtin_auth.time, "monotonic", lambda: now[0])
    for _ in range(3):
        identity = await auth.authenticate(request(token))
        assert (identity.org, identity.subject, identity.token_id) == ("acme", "ann", record.id)
    assert registry.lookups == 1
    await registry.registry.revoke_token(record.id)
    assert await auth.authenticate(request(token)) is not None  # revoked elsewhere: trusted until the window ends
    now[0] += 2.0
    assert await auth.authenticate(request(token)) is None
    assert registry.lookups == 2
    await registry.registry.aclose()


@async_test
async def test_unknown_tokens_are_not_cached_and_expiry_applies_to_cached_ones(tmp_path: Path, monkeypatch) -> None:
    auth, registry = await provider(tmp_path)
    for _ in range(2):
        assert await auth.authenticate(request("mcpac_not-a-token")) is None
    assert registry.lookups == 2 and auth._cache == {}
    token, _ = await auth.issue_token(org="acme", subject="ann", roles=["developer"], expires_in=60)
    assert await auth.authenticate(request(token)) is not None
    wall = builtin_auth.time.time() + 61
    monkeypatch.setattr(builtin_auth.time, "time", lambda: wall)
    assert await auth.authenticate(request(token)) is None  # still cached, but expired
    assert registry.lookups == 3
    await registry.registry.aclose()


@async_test
async def test_cache_off_and_bounded(tmp_path: Path) -> None:
    auth, registry = await provider(tmp_path, cache_seconds=0)
    token, record = await auth.issue_token(org="acme", subject="ann", roles=["developer"])
    await auth.authenticate(request(token))
    await registry.registry.revoke_token(record.id)
    assert await auth.authenticate(request(token)) is None  # no cache: a revocation applies at once
    assert registry.lookups == 2 and auth._cache == {}

    small, small_registry = await provider(tmp_path / "b", cache_size=2)
    tokens = [(await small.issue_token(org="acme", subject=f"u{i}", roles=["developer"]))[0] for i in range(3)]
    for token in tokens:
        assert await small.authenticate(request(token)) is not None
    assert len(small._cache) == 2  # the oldest entry made room
    await registry.registry.aclose()
    await small_registry.registry.aclose()


def test_cache_options_are_validated() -> None:
    with pytest.raises(ValidationError):
        BuiltinAuthConfig(cache_seconds=-1)
    with pytest.raises(ValidationError):
        BuiltinAuthConfig(cache_size=0)
