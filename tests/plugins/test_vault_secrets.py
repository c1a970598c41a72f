"""The ``vault`` secrets backend against a real OpenBao dev server (tests/conftest.py ``openbao``), through hvac.

Each test gets a path prefix of its own on the shared server; tests that seal or stop Vault get a server of their
own (``openbao_private``).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import hvac
import hvac.exceptions
import pytest
from pydantic import ValidationError

from mcp_agent_cloud.errors import NotFoundError
from mcp_agent_cloud.hookspecs.types import PluginContext, SecretsSpec
from mcp_agent_cloud.plugins import vault_secrets as plugin
from mcp_agent_cloud.plugins.vault_secrets import (
    VaultAuthConfig,
    VaultError,
    VaultPermissionDenied,
    VaultSealed,
    VaultSecrets,
    VaultSecretsConfig,
    VaultTransitConfig,
    VaultUnavailable,
)
from tests.conftest import ROOT, OpenBao, PlatformProcess, call_tool
from tests.contracts import assert_registers, async_test
from tests.contracts.secrets_contract import SecretsContract

pytestmark = pytest.mark.vault

SCOPE = "acme/app"
VALUE = "sk-live-Vault-Secret-0123456789"


def unique(stem: str = "t") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


async def open_vault(server: OpenBao, tmp_path: Path, **options) -> VaultSecrets:
    opts = server.options(**{"prefix": unique(), **options})
    store = VaultSecrets(VaultSecretsConfig(**opts), PluginContext(data_dir=tmp_path))
    await store.setup()
    return store


async def until(predicate, *, timeout: float = 30, what: str) -> object:
    """Poll ``predicate`` (sync, may call hvac) while the event loop keeps running the backend's renewal task."""
    with anyio.move_on_after(timeout):
        while not (result := predicate()):
            await anyio.sleep(0.2)
        return result
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kv_path(store: VaultSecrets, key: str, scope: str = SCOPE) -> str:
    return f"{store.config.prefix}/{scope}/{key}"


def prefix_policy(prefix: str, mount: str = "secret", extra: str = "") -> str:
    return (f'path "{mount}/data/{prefix}/*" {{ capabilities = ["create", "read", "update", "delete"] }}\n'
            f'path "{mount}/metadata/{prefix}/*" {{ capabilities = ["read", "list", "delete"] }}\n'
            f'path "{mount}/delete/{prefix}/*" {{ capabilities = ["update"] }}\n' + extra)


def policy_token(server: OpenBao, prefix: str, **create) -> str:
    root = server.client()
    name = unique("policy")
    root.sys.create_or_update_policy(name, prefix_policy(prefix))
    return root.auth.token.create(policies=[name], **create)["auth"]["client_token"]


# -- registration and config ------------------------------------------------------------------------------------


class TestVaultSecretsContract(SecretsContract):
    @pytest.fixture
    def secrets_factory(self, openbao: OpenBao):
        async def factory(where: Path) -> VaultSecrets:
            # the same `where` reopens the same data: the prefix is derived from it
            prefix = "contract-" + hashlib.sha256(str(where).encode()).hexdigest()[:16]
            return await open_vault(openbao, where, prefix=prefix)

        return factory


class TestVaultTransitContract(SecretsContract):
    """The same contract with every value encrypted by a transit key."""

    @pytest.fixture
    def secrets_factory(self, openbao: OpenBao):
        mount = unique("transit")
        openbao.client().sys.enable_secrets_engine("transit", path=mount)

        async def factory(where: Path) -> VaultSecrets:
            prefix = "transit-" + hashlib.sha256(str(where).encode()).hexdigest()[:16]
            return await open_vault(openbao, where, prefix=prefix, transit={"mount": mount})

        return factory


def test_hook_registers_vault() -> None:
    assert_registers(plugin.mcp_agent_cloud_secrets_backends, SecretsSpec, "vault", VaultSecrets,
                     VaultSecretsConfig)
    (spec,) = plugin.mcp_agent_cloud_secrets_backends()
    assert (spec.requires, spec.extra) == (("hvac",), "vault")


def test_without_hvac_the_module_loads_and_selecting_vault_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['hvac'] = None\n"  # as if hvac were not installed
        "import mcp_agent_cloud.plugins.vault_secrets\n"
        "from mcp_agent_cloud.errors import MissingDependencyError\n"
        "from mcp_agent_cloud.manager import load_plugin_manager\n"
        "from mcp_agent_cloud.hookspecs.types import PluginContext\n"
        "pm = load_plugin_manager()\n"
        "try:\n"
        "    pm.build(pm.get_secrets('vault'), {'url': 'http://x'}, PluginContext(data_dir='.'))\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "secrets 'vault' needs hvac" in out.stdout
    assert "pip install 'mcp-agent-cloud[vault]'" in out.stdout


@pytest.mark.parametrize("auth, error", [
    ({"method": "approle"}, "needs role_id"),
    ({"method": "approle", "role_id": "r"}, "one of secret_id or secret_id_file"),
    ({"method": "approle", "role_id": "r", "secret_id": "s", "secret_id_file": "/f"}, "one of secret_id"),
    ({"method": "approle", "role_id": "r", "secret_id": "s", "token": "t"}, "belong to method token"),
    ({"token": "t", "role_id": "r"}, "belong to method approle"),
    ({"token": "t", "token_file": "/f"}, "not both"),
    ({"method": "kerberos"}, "method"),
    ({"tokn": "t"}, "tokn"),
])
def test_auth_config_is_checked(auth: dict, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        VaultSecretsConfig(url="http://x", auth=auth)


@pytest.mark.parametrize("options", [{"mount": "../sys"}, {"prefix": "a//b"}, {"prefix": "/abs"},
                                     {"transit": {"key": "a b"}}, {"timeout": 0}])
def test_path_options_are_checked(options: dict) -> None:
    with pytest.raises(ValidationError):
        VaultSecretsConfig(url="http://x", **options)


def test_secret_options_do_not_show_in_repr() -> None:
    cfg = VaultSecretsConfig(url="http://x", auth={"method": "approle", "role_id": "r", "secret_id": VALUE})
    assert VALUE not in repr(cfg) and VALUE not in str(cfg.model_dump())
    assert VALUE not in repr(VaultSecretsConfig(url="http://x", auth={"token": VALUE}))


def test_every_option_is_documented() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split("#### secrets `vault`", 1)[1].split("\n#### ", 1)[0]
    for prefix, model in (("", VaultSecretsConfig), ("auth.", VaultAuthConfig), ("transit.", VaultTransitConfig)):
        for name in model.model_fields:
            assert f"`{prefix}{name}`" in section, f"docs/config.md (secrets vault) does not list `{prefix}{name}`"


# -- KV v2 as Vault sees it -------------------------------------------------------------------------------------


@async_test
async def test_values_are_kv2_versions_in_vault(openbao: OpenBao, tmp_path: Path) -> None:
    store = await open_vault(openbao, tmp_path)
    try:
        assert await store.put(SCOPE, "API_KEY", "one") == 1
        assert await store.put(SCOPE, "API_KEY", "two") == 2
        kv = openbao.client().secrets.kv.v2
        path = kv_path(store, "API_KEY")
        assert path == f"{store.config.prefix}/acme/app/API_KEY"  # {prefix}/{org}/{deployment}/{key}
        latest = kv.read_secret_version(path, raise_on_deleted_version=True)["data"]
        assert (latest["data"], latest["metadata"]["version"]) == ({"value": "two"}, 2)
        first = kv.read_secret_version(path, version=1, raise_on_deleted_version=True)["data"]
        assert first["data"] == {"value": "one"}
        # a version written by an operator with the bao CLI / hvac is what the backend reads
        kv.create_or_update_secret(path, {"value": "three"})
        assert await store.get(SCOPE, "API_KEY") == "three"
        assert [(r.key, r.version) for r in await store.list(SCOPE)] == [("API_KEY", 3)]
    finally:
        await store.aclose()


@async_test
async def test_soft_delete_is_recoverable_and_destroy_is_not(openbao: OpenBao, tmp_path: Path) -> None:
    store = await open_vault(openbao, tmp_path)
    kv = openbao.client().secrets.kv.v2
    try:
        await store.put(SCOPE, "SOFT", "s1")
        await store.put(SCOPE, "SOFT", "s2")
        await store.delete(SCOPE, "SOFT")
        meta = kv.read_secret_metadata(kv_path(store, "SOFT"))["data"]
        assert all(v["deletion_time"] and not v["destroyed"] for v in meta["versions"].values()), meta
        with pytest.raises(NotFoundError):
            await store.get(SCOPE, "SOFT")
        # an operator undeletes: the backend sees the versions again
        kv.undelete_secret_versions(kv_path(store, "SOFT"), [1, 2])
        assert await store.get(SCOPE, "SOFT") == "s2"
        assert await store.get(SCOPE, "SOFT", version=1) == "s1"
        # after a soft delete the numbering goes on
        await store.delete(SCOPE, "SOFT")
        assert await store.put(SCOPE, "SOFT", "s3") == 3

        await store.put(SCOPE, "GONE", "g1")
        await store.delete(SCOPE, "GONE", destroy=True)
        with pytest.raises(hvac.exceptions.InvalidPath):
            kv.read_secret_metadata(kv_path(store, "GONE"))
        # destroy also purges what a soft delete left behind
        await store.delete(SCOPE, "SOFT")
        await store.delete(SCOPE, "SOFT", destroy=True)
        with pytest.raises(hvac.exceptions.InvalidPath):
            kv.read_secret_metadata(kv_path(store, "SOFT"))
    finally:
        await store.aclose()


@async_test
async def test_entries_not_written_by_the_platform_are_reported(openbao: OpenBao, tmp_path: Path) -> None:
    store = await open_vault(openbao, tmp_path)
    try:
        openbao.client().secrets.kv.v2.create_or_update_secret(kv_path(store, "FOREIGN"), {"password": "x"})
        with pytest.raises(VaultError, match="does not hold a value written by mcp-agent-cloud"):
            await store.get(SCOPE, "FOREIGN")
    finally:
        await store.aclose()


# -- auth -------------------------------------------------------------------------------------------------------


def make_approle(server: OpenBao, prefix: str, **role) -> tuple[str, str, str]:
    """An AppRole auth mount of its own with a role confined to ``prefix``; returns (mount, role_id, secret_id)."""
    root = server.client()
    mount = unique("approle")
    root.sys.enable_auth_method("approle", path=mount)
    policy = unique("policy")
    root.sys.create_or_update_policy(policy, prefix_policy(prefix))
    root.auth.approle.create_or_update_approle("platform", token_policies=[policy], mount_point=mount, **role)
    role_id = root.auth.approle.read_role_id("platform", mount_point=mount)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("platform", mount_point=mount)["data"]["secret_id"]
    return mount, role_id, secret_id


@async_test
async def test_approle_login_confined_to_the_prefix(openbao: OpenBao, tmp_path: Path) -> None:
    prefix = unique()
    mount, role_id, secret_id = make_approle(openbao, prefix)
    secret_file = tmp_path / "secret_id"
    secret_file.write_text(secret_id + "\n")
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(secret_file), "mount": mount}
    store = await open_vault(openbao, tmp_path, prefix=prefix, auth=auth)
    try:
        assert await store.put(SCOPE, "K", VALUE) == 1
        assert await store.get(SCOPE, "K") == VALUE
        info = openbao.client(store._client.token).auth.token.lookup_self()["data"]
        assert info["path"].startswith(f"auth/{mount}/login") and "root" not in info["policies"]
    finally:
        await store.aclose()
    # the same role outside its prefix: permission denied, and the error names the policy paths to check
    outside = await open_vault(openbao, tmp_path, prefix=unique(), auth={**auth, "secret_id": secret_id,
                                                                         "secret_id_file": None})
    try:
        with pytest.raises(VaultPermissionDenied) as info:
            await outside.put(SCOPE, "K", VALUE)
        assert "denied permission to write secret 'K'" in info.value.message
        assert f"secret/data/{outside.config.prefix}/*" in info.value.hint
        assert VALUE not in str(info.value)
    finally:
        await outside.aclose()


@async_test
async def test_wrong_approle_secret_id_is_a_clear_error(openbao: OpenBao, tmp_path: Path) -> None:
    mount, role_id, _ = make_approle(openbao, unique())
    with pytest.raises(VaultPermissionDenied) as info:
        await open_vault(openbao, tmp_path, auth={"method": "approle", "role_id": role_id,
                                                  "secret_id": "not-the-secret-id", "mount": mount})
    assert "refused to let the platform log in" in info.value.message and "secret_id" in info.value.hint
    assert "not-the-secret-id" not in str(info.value)


@async_test
async def test_bad_token_is_a_clear_error(openbao: OpenBao, tmp_path: Path) -> None:
    revoked = policy_token(openbao, unique())
    openbao.client().auth.token.revoke(revoked)
    for token in ("s.not-a-token", revoked):
        with pytest.raises(VaultPermissionDenied) as info:
            await open_vault(openbao, tmp_path, auth={"token": token})
        assert "log in" in info.value.message and "expired or revoked" in info.value.hint
        assert token not in str(info.value)


@async_test
async def test_token_from_file_and_from_env(openbao: OpenBao, tmp_path: Path, monkeypatch) -> None:
    prefix = unique()
    token_file = tmp_path / "token"
    token_file.write_text(policy_token(openbao, prefix) + "\n")
    store = await open_vault(openbao, tmp_path, prefix=prefix, auth={"token_file": str(token_file)})
    try:
        assert await store.put(SCOPE, "K", "from-file") == 1
    finally:
        await store.aclose()
    monkeypatch.setenv("VAULT_TOKEN", policy_token(openbao, prefix))
    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    store = VaultSecrets(VaultSecretsConfig(prefix=prefix), PluginContext(data_dir=tmp_path))
    await store.setup()
    try:
        assert await store.get(SCOPE, "K") == "from-file"
    finally:
        await store.aclose()


@async_test
async def test_no_token_is_a_clear_error(openbao: OpenBao, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    store = VaultSecrets(VaultSecretsConfig(url=openbao.url), PluginContext(data_dir=tmp_path))
    with pytest.raises(VaultError, match="no Vault token") as info:
        await store.setup()
    assert "approle" in info.value.hint


@async_test
async def test_token_is_renewed_past_its_ttl(openbao: OpenBao, tmp_path: Path) -> None:
    prefix = unique()
    token = policy_token(openbao, prefix, ttl="3s", renewable=True, explicit_max_ttl="1h")
    root = openbao.client()
    created = root.auth.token.lookup(token)["data"]
    store = await open_vault(openbao, tmp_path, prefix=prefix, auth={"token": token})
    try:
        await store.put(SCOPE, "K", "v1")
        # the backend renews at 2/3 of the TTL, well before the 3 s run out
        renewed = await until(lambda: root.auth.token.lookup(token)["data"].get("last_renewal_time"),
                              what="the backend to renew its token")
        assert renewed >= created["creation_time"]
        # past the original expiry the token still works: it was renewed, maybe several times
        original_expiry = created["creation_time"] + created["creation_ttl"]
        await until(lambda: time.time() > original_expiry + 2, what="the original TTL to run out")
        assert await store.get(SCOPE, "K") == "v1"
        assert await store.put(SCOPE, "K", "v2") == 2
        assert root.auth.token.lookup(token)["data"]["ttl"] > 0
    finally:
        await store.aclose()
    assert store._renewer is None


@async_test
async def test_approle_logs_in_again_when_renewal_hits_the_max_ttl(openbao: OpenBao, tmp_path: Path) -> None:
    prefix = unique()
    mount, role_id, secret_id = make_approle(openbao, prefix, token_ttl="2s", token_max_ttl="3s")
    store = await open_vault(openbao, tmp_path, prefix=prefix,
                             auth={"method": "approle", "role_id": role_id, "secret_id": secret_id, "mount": mount})
    try:
        first = store._client.token
        await store.put(SCOPE, "K", "v1")
        await until(lambda: store._client.token != first, what="a fresh AppRole login")
        await until(lambda: not hvac.Client(openbao.url, token=first).is_authenticated(),
                    what="the first token to expire")
        assert await store.get(SCOPE, "K") == "v1"  # the platform never noticed
    finally:
        await store.aclose()


@async_test
async def test_expired_approle_token_logs_in_again_on_use(openbao: OpenBao, tmp_path: Path) -> None:
    prefix = unique()
    mount, role_id, secret_id = make_approle(openbao, prefix)
    store = await open_vault(openbao, tmp_path, prefix=prefix, renew=False,
                             auth={"method": "approle", "role_id": role_id, "secret_id": secret_id, "mount": mount})
    try:
        await store.put(SCOPE, "K", "v1")
        openbao.client().auth.token.revoke(store._client.token)  # as if it had expired while nobody renewed it
        assert await store.get(SCOPE, "K") == "v1"
    finally:
        await store.aclose()


@async_test
async def test_narrow_policy_gives_permission_denied_with_a_hint(openbao: OpenBao, tmp_path: Path) -> None:
    prefix = unique()
    root = openbao.client()
    read_only = unique("policy")
    root.sys.create_or_update_policy(read_only, f'path "secret/data/{prefix}/*" {{ capabilities = ["read"] }}\n')
    token = root.auth.token.create(policies=[read_only])["auth"]["client_token"]
    store = await open_vault(openbao, tmp_path, prefix=prefix, auth={"token": token})
    try:
        with pytest.raises(VaultPermissionDenied) as info:
            await store.put(SCOPE, "K", VALUE)
        assert info.value.status == 500 and info.value.code == "secrets_permission_denied"
        for kind in ("data", "metadata", "delete"):
            assert f"secret/{kind}/{prefix}/*" in info.value.hint
        with pytest.raises(VaultPermissionDenied):
            await store.list(SCOPE)
        assert VALUE not in str(info.value)
    finally:
        await store.aclose()


@async_test
async def test_the_documented_policy_is_enough(openbao: OpenBao, tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "config.md").read_text().split("#### secrets `vault`", 1)[1]
    hcl = re.search(r"```hcl\n(.*?)```", docs, re.S).group(1)
    prefix, transit = unique(), unique("transit")
    root = openbao.client()
    root.sys.enable_secrets_engine("transit", path=transit)
    name = unique("policy")
    root.sys.create_or_update_policy(name, hcl.replace('"transit/', f'"{transit}/')
                                     .replace("mcp-agent-cloud/*", f"{prefix}/*"))
    token = root.auth.token.create(policies=[name])["auth"]["client_token"]
    store = await open_vault(openbao, tmp_path, prefix=prefix, auth={"token": token},
                             transit={"mount": transit})  # the key is created by setup, with the policy's rights
    try:
        assert await store.put(SCOPE, "K", "1") == 1
        assert await store.put(SCOPE, "K", "2") == 2
        assert await store.get(SCOPE, "K", version=1) == "1"
        assert [r.key for r in await store.list(SCOPE)] == ["K"]
        await store.rotate()
        assert await store.get(SCOPE, "K") == "2"
        await store.delete(SCOPE, "K")
        await store.put(SCOPE, "OTHER", "x")
        await store.delete(SCOPE, "OTHER", destroy=True)
        assert await store.list(SCOPE) == []
    finally:
        await store.aclose()


@async_test
async def test_wrong_mount_names_the_fix(openbao: OpenBao, tmp_path: Path) -> None:
    store = await open_vault(openbao, tmp_path, mount="no-such-kv")
    try:
        with pytest.raises(VaultError) as info:
            await store.put(SCOPE, "K", "v")
        assert "bao secrets enable -path=no-such-kv kv-v2" in info.value.hint
    finally:
        await store.aclose()


# -- transit ----------------------------------------------------------------------------------------------------


@async_test
async def test_transit_keeps_only_ciphertext_in_kv_and_rotation_rewraps(openbao: OpenBao, tmp_path: Path) -> None:
    root = openbao.client()
    mount = unique("transit")
    root.sys.enable_secrets_engine("transit", path=mount)
    store = await open_vault(openbao, tmp_path, transit={"mount": mount, "key": "platform"})
    kv = root.secrets.kv.v2
    try:
        assert root.secrets.transit.read_key("platform", mount_point=mount)["data"]["derived"]  # created by setup
        await store.put(SCOPE, "A", VALUE)
        await store.put("beta/app", "B", "other")
        stored = kv.read_secret_version(kv_path(store, "A"), raise_on_deleted_version=True)["data"]["data"]
        assert list(stored) == ["ciphertext"] and stored["ciphertext"].startswith("vault:v1:")
        assert VALUE not in str(stored)
        assert await store.get(SCOPE, "A") == VALUE

        await store.rotate()
        assert root.secrets.transit.read_key("platform", mount_point=mount)["data"]["latest_version"] == 2
        for scope, key, value in ((SCOPE, "A", VALUE), ("beta/app", "B", "other")):
            latest = kv.read_secret_version(kv_path(store, key, scope), raise_on_deleted_version=True)["data"]
            assert latest["data"]["ciphertext"].startswith("vault:v2:"), latest
            assert latest["metadata"]["version"] == 2  # the re-wrapped value is a new KV version
            assert await store.get(scope, key) == value
        assert await store.get(SCOPE, "A", version=1) == VALUE  # old ciphertext still decrypts

        # derived key: a ciphertext copied to another entry does not decrypt there
        kv.create_or_update_secret(kv_path(store, "COPY"), stored)
        with pytest.raises(VaultError, match="decrypt"):
            await store.get(SCOPE, "COPY")
    finally:
        await store.aclose()
    # without transit configured, a transit-encrypted entry says what is missing
    plain = await open_vault(openbao, tmp_path, prefix=store.config.prefix)
    try:
        with pytest.raises(VaultError, match="transit, which is not configured"):
            await plain.get(SCOPE, "A")
    finally:
        await plain.aclose()


@async_test
async def test_rotate_without_transit_explains_who_rotates(openbao: OpenBao, tmp_path: Path) -> None:
    store = await open_vault(openbao, tmp_path)
    try:
        with pytest.raises(VaultError, match="no key of its own") as info:
            await store.rotate()
        assert "bao operator rotate" in info.value.hint and "transit" in info.value.hint
    finally:
        await store.aclose()


# -- Vault sealed or down ---------------------------------------------------------------------------------------


@async_test
async def test_sealed_vault_is_a_clear_error(openbao_private: OpenBao, tmp_path: Path) -> None:
    store = await open_vault(openbao_private, tmp_path)
    try:
        await store.put(SCOPE, "K", VALUE)
        openbao_private.client().sys.seal()
        with pytest.raises(VaultSealed) as info:
            await store.get(SCOPE, "K")
        assert info.value.status == 503 and "is sealed" in info.value.message
        assert openbao_private.url in info.value.message and "bao operator unseal" in info.value.hint
        with pytest.raises(VaultSealed):
            await store.put(SCOPE, "K", "v")
    finally:
        await store.aclose()
    with pytest.raises(VaultSealed):  # and at start
        await open_vault(openbao_private, tmp_path)


@async_test
async def test_vault_down_is_a_clear_error(openbao_private: OpenBao, tmp_path: Path) -> None:
    store = await open_vault(openbao_private, tmp_path, timeout=5)
    try:
        await store.put(SCOPE, "K", VALUE)
        openbao_private.stop()
        with pytest.raises(VaultUnavailable) as info:
            await store.get(SCOPE, "K")
        assert info.value.status == 503 and "cannot reach" in info.value.message
        assert openbao_private.url in info.value.message and "check `url`" in info.value.hint
        with pytest.raises(VaultUnavailable):
            await store.list(SCOPE)
    finally:
        await store.aclose()
    with pytest.raises(VaultUnavailable, match="cannot reach"):  # and at start
        await open_vault(openbao_private, tmp_path)


# -- end to end: the platform on the vault backend -----------------------------------------------------------

ENV_APP = '''import os

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("envcheck")


@mcp.tool()
def has_tag(expected: str) -> str:
    return "yes" if os.environ.get("TAG") == expected else "no"
'''


@pytest.mark.e2e
@pytest.mark.network
def test_platform_serves_with_vault_secrets(openbao: OpenBao, tmp_path: Path, shared_envs: Path) -> None:
    prefix = unique("e2e")
    platform = PlatformProcess(tmp_path, shared_envs, extra_config=openbao.config_snippet(prefix=prefix))
    platform.start()
    try:
        app = tmp_path / "envapp"
        app.mkdir()
        (app / "main.py").write_text(ENV_APP)
        (app / "requirements.txt").write_text("mcp>=2.3,<3\n")
        platform.cli_json("deploy", "app", str(app), "--name", "envapp", "--env", f"TAG={VALUE}")
        endpoint = platform.cli_json("status", "envapp")["endpoint"]
        assert anyio.run(call_tool, endpoint, platform.token, "has_tag", {"expected": VALUE}) == "yes"
        # the --env values went to Vault, under the configured prefix
        kv = openbao.client().secrets.kv.v2
        keys = kv.list_secrets(f"{prefix}/default/envapp")["data"]["keys"]
        assert keys, "nothing was written under the prefix"
        assert not list((tmp_path / "data").glob("secrets/*")), "the local store must not be used"
    finally:
        platform.stop()
