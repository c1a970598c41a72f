"""The contract every :class:`~mcp_agent_cloud.hookspecs.types.SecretsBackend` must pass.

Use it by subclassing in a ``Test*`` class that provides a ``secrets_factory`` fixture: an async callable
``factory(where: Path) -> SecretsBackend`` returning a backend after ``setup``. ``where`` is a fresh per-test
directory (``tmp_path``): each test starts from an empty store, and calling the factory again with the same ``where``
(after ``aclose``) must reopen the same data. A file backend keeps its files there; a server backend (Vault) maps
``where`` to a namespace of its own, such as a path prefix. The suite never looks behind the interface.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from mcp_agent_cloud.errors import NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import SecretsBackend

from . import async_test

SecretsFactory = Callable[[Path], Awaitable[SecretsBackend]]
SCOPE = "acme/app"
VALUE = "sk-live-Contract-Secret-0123456789"

BAD_SCOPES = ["", "acme", "/app", "acme/", "Acme/app", "acme/../x", "acme//app", "a b/c", "acme/app/../../x"]
BAD_KEYS = ["", "1ABC", "A-B", "A.B", "A B", "A/B", "../X", "ключ"]


@contextlib.asynccontextmanager
async def opened(factory: SecretsFactory, where: Path) -> AsyncIterator[SecretsBackend]:
    backend = await factory(where)
    try:
        yield backend
    finally:
        await backend.aclose()


class SecretsContract:
    """Backend-neutral behaviour of a secrets backend. Not collected by itself (no ``Test`` prefix)."""

    @async_test
    async def test_round_trip_and_versions(self, secrets_factory: SecretsFactory, tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            assert await store.put(SCOPE, "API_KEY", "one") == 1
            assert await store.put(SCOPE, "API_KEY", "two") == 2
            assert await store.get(SCOPE, "API_KEY") == "two"
            assert await store.get(SCOPE, "API_KEY", version=1) == "one"
            assert await store.get(SCOPE, "API_KEY", version=2) == "two"
            with pytest.raises(NotFoundError) as info:
                await store.get(SCOPE, "API_KEY", version=3)
            assert "API_KEY" in info.value.message
            with pytest.raises(NotFoundError):
                await store.get(SCOPE, "MISSING")
        async with opened(secrets_factory, tmp_path) as again:  # a new instance sees what the first one wrote
            assert await again.get(SCOPE, "API_KEY") == "two"
            assert await again.put(SCOPE, "API_KEY", "three") == 3

    @async_test
    async def test_values_come_back_exactly(self, secrets_factory: SecretsFactory, tmp_path: Path) -> None:
        values = {"EMPTY": "", "UNICODE": "пароль ✓ 密码", "MULTILINE": "-----BEGIN KEY-----\nabc\n\n-----END-----\n",
                  "SPACES": "  padded  ", "JSONISH": '{"value": "x", "ciphertext": "vault:v1:nope"}',
                  "_INTERNAL": "x" * 20_000}
        async with opened(secrets_factory, tmp_path) as store:
            for key, value in values.items():
                await store.put(SCOPE, key, value)
            for key, value in values.items():
                assert await store.get(SCOPE, key) == value, key

    @async_test
    async def test_non_string_values_are_refused(self, secrets_factory: SecretsFactory, tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            for value in (None, 1, b"bytes", {"a": 1}):
                with pytest.raises(ValidationFailed):
                    await store.put(SCOPE, "K", value)  # type: ignore[arg-type]
            assert await store.list(SCOPE) == []

    @async_test
    async def test_list_shows_latest_versions_and_no_values(self, secrets_factory: SecretsFactory,
                                                            tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            before = time.time()
            await store.put(SCOPE, "B_KEY", VALUE)
            await store.put(SCOPE, "A_KEY", "x")
            await store.put(SCOPE, "B_KEY", VALUE + "2")
            rows = await store.list(SCOPE)
            assert [(r.key, r.version) for r in rows] == [("A_KEY", 1), ("B_KEY", 2)]
            assert VALUE not in repr(rows) and VALUE not in str([r.model_dump() for r in rows])
            # epoch seconds (not ms, not 0): within a generous window around the writes
            assert all(before - 60 < r.updated_at < time.time() + 60 for r in rows), rows
            assert await store.list("acme/empty") == []
            assert await store.list("nobody/app") == []

    @async_test
    async def test_delete_hides_every_version(self, secrets_factory: SecretsFactory, tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            await store.put(SCOPE, "K", "1")
            await store.put(SCOPE, "K", "2")
            await store.put(SCOPE, "KEEP", "k")
            await store.delete(SCOPE, "K")
            for version in (None, 1, 2):
                with pytest.raises(NotFoundError):
                    await store.get(SCOPE, "K", version=version)
            assert [r.key for r in await store.list(SCOPE)] == ["KEEP"]
            with pytest.raises(NotFoundError):
                await store.delete(SCOPE, "K")  # already deleted
            # the key can be set again; whether numbering restarts depends on soft delete vs destroy
            again = await store.put(SCOPE, "K", "again")
            assert isinstance(again, int) and again >= 1
            assert await store.get(SCOPE, "K") == "again"
            assert [(r.key, r.version) for r in await store.list(SCOPE)] == [("K", again), ("KEEP", 1)]
            assert await store.get(SCOPE, "KEEP") == "k"

    @async_test
    async def test_destroy_removes_the_history(self, secrets_factory: SecretsFactory, tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            await store.put(SCOPE, "K", "1")
            await store.put(SCOPE, "K", "2")
            await store.delete(SCOPE, "K", destroy=True)
            for version in (None, 1, 2):
                with pytest.raises(NotFoundError):
                    await store.get(SCOPE, "K", version=version)
            assert await store.list(SCOPE) == []
            with pytest.raises(NotFoundError):
                await store.delete(SCOPE, "K", destroy=True)
            assert await store.put(SCOPE, "K", "fresh") == 1  # nothing of the old key is left

    @async_test
    async def test_deleting_a_missing_key_is_not_found(self, secrets_factory: SecretsFactory, tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            for destroy in (False, True):
                with pytest.raises(NotFoundError):
                    await store.delete(SCOPE, "NEVER_SET", destroy=destroy)

    @async_test
    async def test_scopes_and_orgs_are_isolated(self, secrets_factory: SecretsFactory, tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            await store.put("acme/app", "TOKEN", "acme-app")
            await store.put("acme/app2", "TOKEN", "acme-app2")  # a scope whose name extends another's
            await store.put("acme/app/sub", "NESTED", "acme-app-sub")  # a scope below another
            await store.put("beta/app", "TOKEN", "beta-app")
            assert await store.get("acme/app", "TOKEN") == "acme-app"
            assert await store.get("acme/app2", "TOKEN") == "acme-app2"
            assert await store.get("beta/app", "TOKEN") == "beta-app"
            assert [r.key for r in await store.list("acme/app")] == ["TOKEN"]
            assert [r.key for r in await store.list("acme/app/sub")] == ["NESTED"]
            with pytest.raises(NotFoundError):
                await store.get("acme/app", "NESTED")
            with pytest.raises(NotFoundError):
                await store.get("gamma/app", "TOKEN")
            await store.delete("acme/app", "TOKEN", destroy=True)
            with pytest.raises(NotFoundError):
                await store.get("acme/app", "TOKEN")
            assert await store.get("acme/app2", "TOKEN") == "acme-app2"
            assert await store.get("beta/app", "TOKEN") == "beta-app"
            assert await store.get("acme/app/sub", "NESTED") == "acme-app-sub"

    @pytest.mark.parametrize("scope", BAD_SCOPES)
    @async_test
    async def test_bad_scopes_are_refused(self, secrets_factory: SecretsFactory, tmp_path: Path, scope: str) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            with pytest.raises(ValidationFailed):
                await store.put(scope, "KEY", "v")
            with pytest.raises(ValidationFailed):
                await store.get(scope, "KEY")
            with pytest.raises(ValidationFailed):
                await store.list(scope)
            with pytest.raises(ValidationFailed):
                await store.delete(scope, "KEY")

    @pytest.mark.parametrize("key", BAD_KEYS)
    @async_test
    async def test_bad_keys_are_refused(self, secrets_factory: SecretsFactory, tmp_path: Path, key: str) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            with pytest.raises(ValidationFailed):
                await store.put(SCOPE, key, "v")
            with pytest.raises(ValidationFailed):
                await store.get(SCOPE, key)
            with pytest.raises(ValidationFailed):
                await store.delete(SCOPE, key, destroy=True)
            assert await store.list(SCOPE) == []

    @async_test
    async def test_concurrent_puts_get_distinct_versions(self, secrets_factory: SecretsFactory,
                                                         tmp_path: Path) -> None:
        async with opened(secrets_factory, tmp_path) as store:
            numbers: dict[int, str] = {}

            async def put(i: int) -> None:
                numbers[await store.put(SCOPE, "K", f"value-{i}")] = f"value-{i}"

            # 8: Vault's KV keeps 10 versions by default, and every one is read back below
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(put, i)
            assert sorted(numbers) == list(range(1, 9))
            for version, value in numbers.items():  # each number names the value that write stored
                assert await store.get(SCOPE, "K", version=version) == value
            assert await store.get(SCOPE, "K") == numbers[8]
