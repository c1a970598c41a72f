"""Each benchmark in smoke mode through its real entry point, benchmarks/run: it must run, measure both sides and
say which goals it checks. No figure is asserted against a goal here (timings belong in benchmarks, not tests)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT

RUN = ROOT / "benchmarks" / "run"


def smoke(name: str) -> dict:
    result = subprocess.run(["bash", str(RUN), name, "--smoke", "--json"], capture_output=True, text=True,
                            timeout=900, cwd=ROOT)
    assert result.returncode == 0, f"benchmarks/run {name} failed:\n{result.stderr[-6000:]}"
    report = json.loads(result.stdout)
    assert report["smoke"] is True and report["failed"] == []
    assert set(report["results"]) == {name}
    tables = report["results"][name]["tables"]
    assert tables, f"{name} printed no table"
    for table in tables:
        assert table["rows"], table["title"]
        for row in table["rows"]:
            assert row["ours"] is not None, (table["title"], row)
    return report


def rows(report: dict, name: str) -> dict[str, dict]:
    return {f"{t['title']} / {r['metric']}": r for t in report["results"][name]["tables"] for r in t["rows"]}


def test_packaging_smoke():
    report = smoke("packaging")
    by_metric = {r["metric"]: r for r in rows(report, "packaging").values()}
    assert by_metric["same sha256 on two runs"]["ours"] == 1.0
    assert by_metric["throughput"]["baseline"] > 0 and by_metric["throughput"]["goal"] == "≥ 0.8×"


def test_unknown_benchmark_is_a_clear_error():
    result = subprocess.run(["bash", str(RUN), "nope"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert "unknown benchmark nope; choose from packaging, gateway" in result.stderr


def test_docs_sections_are_replaced_in_place(tmp_path):
    from benchmarks.__main__ import write_docs

    path = tmp_path / "benchmarks.md"
    path.write_text("# B\n\n<!-- results -->\n<!-- bench:gateway -->\nold\n<!-- /bench:gateway -->\n"
                    "<!-- /results -->\n\n## Analysis\nhand-written\n")
    write_docs({"gateway": "<!-- bench:gateway -->\nnew\n<!-- /bench:gateway -->",
                "stdio": "<!-- bench:stdio -->\ns\n<!-- /bench:stdio -->"}, path)
    text = path.read_text()
    assert "old" not in text and "new" in text and text.index("s\n<!-- /bench:stdio") < text.index("<!-- /results")
    assert text.endswith("## Analysis\nhand-written\n")


def test_markdown_tables_escape_pipes_in_every_cell():
    from benchmarks.common import Row, Table

    text = Table("t", "ours | x", "tar | gzip -1", [Row("a | b", "s", 1.0, 2.0)]).markdown()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    # every line of the table has the same number of unescaped separators as the header
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert len(counts) == 1 and "tar \\| gzip -1" in lines[0] and "a \\| b" in lines[2]


@pytest.mark.network  # mcp-proxy from PyPI and supergateway from npm, installed pinned under .tools/bench
def test_stdio_smoke():
    report = smoke("stdio")
    titles = [t["title"] for t in report["results"]["stdio"]["tables"]]
    assert any("mcp-proxy" in t for t in titles) and any("supergateway" in t for t in titles), titles


def test_gateway_smoke():
    report = smoke("gateway")
    by_metric = rows(report, "gateway")
    assert len(report["results"]["gateway"]["tables"]) == 2  # mode auto and legacy
    failed = [r for k, r in by_metric.items() if k.endswith("/ failed calls")]
    assert failed and all(r["ours"] == 0 and r["baseline"] == 0 for r in failed), failed
    assert all(r["baseline"] for k, r in by_metric.items() if "latency p50" in k)


@pytest.mark.docker
@pytest.mark.xdist_group("engines")
def test_deploy_smoke():
    report = smoke("deploy")
    summary = report["results"]["deploy"]["tables"][0]
    assert {r["metric"].split(":")[0] for r in summary["rows"]} == {"process", "docker"}
    assert all(r["baseline"] for r in summary["rows"]), summary  # the by-hand side ran too


@pytest.mark.temporal
def test_workflows_smoke():
    report = smoke("workflows")
    tables = report["results"]["workflows"]["tables"]
    assert [("asyncio" in t["title"], "Temporal" in t["title"]) for t in tables] == [(True, False), (False, True)]
    for t in tables:
        starts = next(r for r in t["rows"] if r["metric"] == "run starts per second")
        assert starts["ours"] > 0 and starts["baseline"] > 0
        assert next(r for r in t["rows"] if r["metric"].startswith("failed calls"))["ours"] == 0


def test_scale_smoke():
    report = smoke("scale")
    by_metric = {r["metric"]: r for r in rows(report, "scale").values()}
    assert by_metric["sessions open"]["ours"] == by_metric["sessions open"]["baseline"] == 20
    assert by_metric["errors (open, streams, the tools/call probe)"]["ours"] == 0
    assert by_metric["failed deploys"]["ours"] == 0 and by_metric["deployments running"]["ours"] == 3
