"""The ``local`` secrets backend: encryption at rest, versions, isolation, key rotation and crash safety."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from mcp_agent_cloud.errors import NotFoundError, ValidationFailed
from mcp_agent_cloud.hookspecs.types import PluginContext, SecretsSpec
from mcp_agent_cloud.plugins import local_secrets as plugin
from mcp_agent_cloud.plugins.local_secrets import LocalSecrets, LocalSecretsConfig, SecretsStoreError
from tests.contracts import assert_registers, async_test
from tests.contracts.secrets_contract import SecretsContract

SCOPE = "acme/app"
PLAINTEXT = "sk-live-Very-Secret-Value-0123456789"


async def open_store(data_dir: Path, **options) -> LocalSecrets:
    store = LocalSecrets(LocalSecretsConfig(**options), PluginContext(data_dir=data_dir))
    await store.setup()
    return store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestLocalSecretsContract(SecretsContract):
    @pytest.fixture
    def secrets_factory(self):
        return open_store


def test_hook_registers_local() -> None:
    assert_registers(plugin.mcp_agent_cloud_secrets_backends, SecretsSpec, "local", LocalSecrets, LocalSecretsConfig)


@async_test
async def test_round_trip_and_versions(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    assert await store.put(SCOPE, "API_KEY", "one") == 1
    assert await store.put(SCOPE, "API_KEY", "two") == 2
    assert await store.put(SCOPE, "_other", "") == 1
    assert await store.get(SCOPE, "API_KEY") == "two"
    assert await store.get(SCOPE, "API_KEY", version=1) == "one"
    assert await store.get(SCOPE, "_other") == ""
    with pytest.raises(NotFoundError) as info:
        await store.get(SCOPE, "API_KEY", version=3)
    assert "API_KEY" in info.value.message and SCOPE in info.value.message
    with pytest.raises(NotFoundError):
        await store.get(SCOPE, "MISSING")
    # a fresh instance reads what the first one wrote
    again = await open_store(tmp_path)
    assert await again.get(SCOPE, "API_KEY") == "two"
    assert await again.put(SCOPE, "API_KEY", "three") == 3


@async_test
async def test_list_shows_latest_versions_and_no_values(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "B_KEY", PLAINTEXT)
    await store.put(SCOPE, "A_KEY", "x")
    await store.put(SCOPE, "B_KEY", PLAINTEXT + "2")
    rows = await store.list(SCOPE)
    assert [(r.key, r.version) for r in rows] == [("A_KEY", 1), ("B_KEY", 2)]
    assert PLAINTEXT not in repr(rows) and all(r.updated_at > 0 for r in rows)
    assert await store.list("acme/empty") == []


@async_test
async def test_delete_always_destroys(tmp_path: Path) -> None:
    # The contract suite covers what every backend does on delete; local has no soft delete, so numbering restarts.
    store = await open_store(tmp_path)
    await store.put(SCOPE, "K", "1")
    await store.put(SCOPE, "K", "2")
    await store.delete(SCOPE, "K", destroy=False)
    with pytest.raises(NotFoundError):
        await store.get(SCOPE, "K", version=1)
    assert await store.put(SCOPE, "K", "again") == 1


@async_test
async def test_scopes_and_orgs_are_isolated(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put("acme/app", "TOKEN", "acme-app")
    await store.put("acme/other", "TOKEN", "acme-other")
    await store.put("beta/app", "TOKEN", "beta-app")
    assert await store.get("acme/app", "TOKEN") == "acme-app"
    assert await store.get("acme/other", "TOKEN") == "acme-other"
    assert await store.get("beta/app", "TOKEN") == "beta-app"
    await store.delete("acme/app", "TOKEN")
    assert await store.get("acme/other", "TOKEN") == "acme-other"
    with pytest.raises(NotFoundError):
        await store.get("acme/app", "TOKEN")
    doc = json.loads(store.path.read_bytes())
    assert sorted(doc["orgs"]) == ["acme", "beta"]  # one data key per org
    assert doc["orgs"]["acme"]["wrapped_key"] != doc["orgs"]["beta"]["wrapped_key"]


@async_test
async def test_ciphertexts_cannot_be_swapped_between_entries(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "A", "value-a")
    await store.put(SCOPE, "B", "value-b")
    doc = json.loads(store.path.read_bytes())
    entries = doc["scopes"][SCOPE]
    entries["A"][0]["value"], entries["B"][0]["value"] = entries["B"][0]["value"], entries["A"][0]["value"]
    store.path.write_text(json.dumps(doc))
    with pytest.raises(SecretsStoreError, match="cannot be decrypted"):
        await store.get(SCOPE, "A")


@pytest.mark.parametrize("scope", ["", "acme", "/app", "acme/", "Acme/app", "acme/../x", "acme//app", "a b/c"])
@async_test
async def test_bad_scopes_are_refused(tmp_path: Path, scope: str) -> None:
    store = await open_store(tmp_path)
    with pytest.raises(ValidationFailed):
        await store.put(scope, "KEY", "v")


@pytest.mark.parametrize("key", ["", "1ABC", "A-B", "A.B", "A B", "ключ"])
@async_test
async def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = await open_store(tmp_path)
    with pytest.raises(ValidationFailed):
        await store.put(SCOPE, key, "v")
    with pytest.raises(ValidationFailed):
        await store.get(SCOPE, key)


@async_test
async def test_plaintext_is_never_on_disk_and_modes_are_private(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "API_KEY", PLAINTEXT)
    await store.put("beta/x", "API_KEY", PLAINTEXT)
    assert store.path == tmp_path / "secrets" / "store.json"
    assert store.key_file == tmp_path / "keys" / "master.key"
    needles = [PLAINTEXT.encode(), base64.b64encode(PLAINTEXT.encode()), PLAINTEXT.encode().hex().encode()]
    for path in (store.path, store.key_file):
        blob = path.read_bytes()
        assert not any(n in blob for n in needles), path
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
    assert len(base64.b64decode(store.key_file.read_bytes().strip())) == 32


@async_test
async def test_wrong_or_missing_master_key_is_a_clear_error(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "K", PLAINTEXT)
    original = store.key_file.read_bytes()

    store.key_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    with pytest.raises(SecretsStoreError, match="wrong master key") as info:
        await open_store(tmp_path)
    assert str(store.key_file) in info.value.message and PLAINTEXT not in str(info.value)

    store.key_file.write_bytes(b"not a key")
    with pytest.raises(SecretsStoreError, match="not a master key") as info:
        await open_store(tmp_path)
    assert "not a key" not in str(info.value)

    store.key_file.unlink()
    with pytest.raises(SecretsStoreError, match="missing"):
        await open_store(tmp_path)
    assert not store.key_file.exists()  # a missing key is reported, never silently replaced

    store.key_file.write_bytes(original)
    assert await (await open_store(tmp_path)).get(SCOPE, "K") == PLAINTEXT


@async_test
async def test_rotate_keeps_values_and_replaces_the_key(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "K", "v1")
    await store.put(SCOPE, "K", "v2")
    await store.put("beta/app", "K", "beta")
    old_key = store.key_file.read_bytes()
    old_id = json.loads(store.path.read_bytes())["key_id"]

    await store.rotate()
    assert store.key_file.read_bytes() != old_key
    assert mode(store.key_file) == 0o600 and not store.next_key_file.exists()
    assert json.loads(store.path.read_bytes())["key_id"] != old_id
    assert await store.get(SCOPE, "K") == "v2" and await store.get(SCOPE, "K", version=1) == "v1"
    reopened = await open_store(tmp_path)
    assert await reopened.get("beta/app", "K") == "beta"
    assert await reopened.put(SCOPE, "K", "v3") == 3
    # the old key no longer opens the store
    store.key_file.write_bytes(old_key)
    with pytest.raises(SecretsStoreError, match="wrong master key"):
        await open_store(tmp_path)


@async_test
async def test_rotation_interrupted_after_commit_is_finished_on_open(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "K", "kept")

    def crash() -> None:
        raise OSError("power cut")

    monkeypatch.setattr(store, "_promote_key", crash)
    with pytest.raises(OSError, match="power cut"):
        await store.rotate()
    new_key = store.next_key_file.read_bytes()  # the store already names this key; master.key is still the old one
    assert new_key != store.key_file.read_bytes()

    reopened = await open_store(tmp_path)
    assert await reopened.get(SCOPE, "K") == "kept"
    assert store.key_file.read_bytes() == new_key and not store.next_key_file.exists()


@async_test
async def test_rotation_interrupted_before_commit_keeps_the_old_key(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "K", "kept")
    old_key = store.key_file.read_bytes()
    store.next_key_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")  # step 1 done, then a crash
    reopened = await open_store(tmp_path)
    assert await reopened.get(SCOPE, "K") == "kept"
    assert store.key_file.read_bytes() == old_key and not store.next_key_file.exists()


@async_test
async def test_garbage_temp_file_does_not_hurt(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.put(SCOPE, "K", "committed")
    tmp = store.path.with_name(store.path.name + ".tmp")
    tmp.write_bytes(b'{"format": 1, "scopes": {"acme/app": {"K": [garbage\x00\xff')
    tmp.chmod(0o644)
    reopened = await open_store(tmp_path)
    assert await reopened.get(SCOPE, "K") == "committed"
    assert await reopened.put(SCOPE, "K", "next") == 2
    assert not tmp.exists() and mode(store.path) == 0o600
    assert await (await open_store(tmp_path)).get(SCOPE, "K") == "next"


CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import anyio
    from mcp_agent_cloud.hookspecs.types import PluginContext
    from mcp_agent_cloud.plugins.local_secrets import LocalSecrets, LocalSecretsConfig

    real_write = os.write
    cut = False

    def short_write(fd, data):  # a disk taking short writes; once told, stop half-way and wait for the kill
        written = real_write(fd, bytes(data[:8192]))
        if cut and written < len(data):
            print("cut", flush=True)
            time.sleep(60)
        return written

    os.write = short_write

    async def main():
        global cut
        store = LocalSecrets(LocalSecretsConfig(), PluginContext(data_dir=Path(sys.argv[1])))
        await store.setup()
        await store.put("acme/app", "PADDING", "x" * 100_000)
        for i in range(1, 1000):
            await store.put("acme/app", "COUNTER", str(i))
            print(i, flush=True)
            cut = i >= int(sys.argv[2])

    anyio.run(main)
""")


def test_sigkill_mid_write_leaves_the_last_committed_store(tmp_path: Path) -> None:
    committed = 15
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(committed)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == "cut":  # the child is inside the write of put number committed+1
                child.send_signal(signal.SIGKILL)
                break
        assert lines[-2:] == [str(committed), "cut"], (lines, child.stderr.read())
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    async def check() -> None:
        store = await open_store(tmp_path)
        assert await store.get(SCOPE, "COUNTER") == str(committed)
        assert [(r.key, r.version) for r in await store.list(SCOPE)] == [("COUNTER", committed), ("PADDING", 1)]
        assert await store.put(SCOPE, "COUNTER", "after") == committed + 1
        assert await (await open_store(tmp_path)).get(SCOPE, "COUNTER") == "after"

    anyio.run(check)


def test_concurrent_puts_get_distinct_versions(tmp_path: Path) -> None:
    # built outside any event loop, as the plugin manager does, then used inside one
    store = LocalSecrets(LocalSecretsConfig(), PluginContext(data_dir=tmp_path))

    async def main() -> list[int]:
        await store.setup()
        numbers: list[int] = []

        async def put(i: int) -> None:
            numbers.append(await store.put(SCOPE, "K", f"value-{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(put, i)
        assert await store.get(SCOPE, "K", version=12) in {f"value-{i}" for i in range(12)}
        return numbers

    assert sorted(anyio.run(main)) == list(range(1, 13))
