"""benchmarks/run [NAME ...] [--smoke] [--json] [--no-docs]: run the benchmarks, print a table each, and record them
in docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import anyio

from .common import ROOT, Context, Table, machine

# run order: cheap first, so a smoke run fails fast
BENCHMARKS = {
    "packaging": "packaging: ours against tar -c | gzip -1 on one synthetic tree",
    "gateway": "gateway overhead: tools/call direct against through the gateway with auth",
    "stdio": "stdio adapter against mcp-proxy and supergateway",
    "deploy": "deploy latency, CLI start to a healthy endpoint, per pipeline step",
    "workflows": "workflow starts per second and pause-to-resume, asyncio and Temporal",
    "scale": "1,000 idle sessions on the gateway, 50 deployments on one platform",
}
DOCS = ROOT / "docs" / "benchmarks.md"


def _section(name: str, tables: list[Table], facts: dict, smoke: bool, seconds: float) -> str:
    facts_line = ", ".join(f"{k} {v}" for k, v in facts.items() if v is not None)
    out = [f"<!-- bench:{name} -->", f"### {name}", "",
           f"_{BENCHMARKS[name]}. Measured {facts['date']} in {seconds:.0f} s{' (smoke sizes)' if smoke else ''}; "
           f"machine: {facts_line}._", ""]
    for table in tables:
        out += [table.markdown(), ""]
    out.append(f"<!-- /bench:{name} -->")
    return "\n".join(out)


def write_docs(sections: dict[str, str], path: Path = DOCS) -> None:
    """Replace each benchmark's generated section in place; everything outside the markers is hand-written
    (the analysis of missed goals) and kept. A benchmark not yet in the file goes before the results' end marker."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n<!-- results -->\n<!-- /results -->\n"
    for name, body in sections.items():
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: body, text)
        else:
            text = text.replace("<!-- /results -->", body + "\n\n<!-- /results -->")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run", description=__doc__.split("\n\n")[0],
        epilog="Every benchmark measures its baseline in the same run and prints ours / baseline, so the noise of a "
               "shared machine hits both sides. Names: " + ", ".join(BENCHMARKS))
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, to check that each benchmark still works (CI runs this); implies --no-docs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (progress on stderr)")
    parser.add_argument("--no-docs", action="store_true", help=f"do not update {DOCS.relative_to(ROOT)}")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories (their paths are printed)")
    opts = parser.parse_args(argv)
    unknown = [n for n in opts.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = [n for n in BENCHMARKS if n in opts.names] if opts.names else list(BENCHMARKS)
    facts = machine()
    results, sections, failed = {}, {}, []
    for name in names:
        print(f"==> {name}: {BENCHMARKS[name]}", file=sys.stderr, flush=True)
        module = importlib.import_module(f".{name}", __package__)
        scratch = tempfile.mkdtemp(prefix=f"mcpac-bench-{name}-")
        ctx = Context(smoke=opts.smoke, workdir=Path(scratch))
        start = time.monotonic()
        try:
            tables = anyio.run(module.run, ctx) if inspect.iscoroutinefunction(module.run) else module.run(ctx)
        except Exception as exc:  # one broken benchmark must not hide the others' results
            import traceback

            traceback.print_exc()
            print(f"error: benchmark {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        finally:
            if opts.keep:
                print(f"  .. scratch dir kept: {scratch}", file=sys.stderr)
            else:
                import shutil

                shutil.rmtree(scratch, ignore_errors=True)
        seconds = time.monotonic() - start
        results[name] = {"seconds": round(seconds, 1), "tables": [t.as_dict() for t in tables]}
        sections[name] = _section(name, tables, facts, opts.smoke, seconds)
        if not opts.json:
            for table in tables:
                print("\n" + table.text() + "\n", flush=True)
    if opts.json:
        json.dump({"machine": facts, "smoke": opts.smoke, "results": results, "failed": failed}, sys.stdout, indent=2)
        print()
    if not (opts.smoke or opts.no_docs) and sections:
        write_docs(sections)
        print(f"==> wrote {DOCS.relative_to(ROOT)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
