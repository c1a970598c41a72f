"""The docs keep up with the code: every hookspec has a section, every config key is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from mcp_agent_cloud import hookspecs
from mcp_agent_cloud.config import PlatformConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def hookspec_names() -> list[str]:
    return sorted(
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("mcp_agent_cloud_")
    )


def config_keys(model: type[BaseModel] = PlatformConfig, prefix: str = "") -> list[str]:
    """Every key, nested ones dotted (``limits.max_upload_bytes``). Backend refs are leaves: their options
    belong to the backend."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and sub.model_config.get("extra") == "forbid":
            keys += config_keys(sub, prefix + name + ".")
    return keys


def test_found_what_to_check():
    # guards the checks below against vacuously passing on an empty list
    assert {"mcp_agent_cloud_builders", "mcp_agent_cloud_pipeline_step"} <= set(hookspec_names())
    assert {"listen", "limits.max_upload_bytes", "plugins.disable"} <= set(config_keys())


@pytest.mark.parametrize("name", hookspec_names())
def test_every_hookspec_has_a_section(name):
    headings = re.findall(r"^### (\S+)\s*$", (DOCS / "plugins.md").read_text(), re.MULTILINE)
    assert name in headings, f"docs/plugins.md needs a section headed exactly '### {name}'"


def test_no_section_for_a_hook_that_does_not_exist():
    headings = re.findall(r"^### (mcp_agent_cloud_\w+)\s*$", (DOCS / "plugins.md").read_text(), re.MULTILINE)
    stale = sorted(set(headings) - set(hookspec_names()))
    assert not stale, f"docs/plugins.md documents hooks that are not hookspecs: {stale}"


@pytest.mark.parametrize("key", config_keys())
def test_every_config_key_is_documented(key):
    # a key counts as documented when it appears as code: `listen` or `limits.max_upload_bytes`
    assert f"`{key}`" in (DOCS / "config.md").read_text(), f"docs/config.md does not mention `{key}`"
