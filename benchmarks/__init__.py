"""Benchmarks of mcp-agent-cloud against the tools users would pick instead, each baseline measured in the same run."""
