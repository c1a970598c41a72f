"""mcp-agent-cloud: an open, self-hostable MCP Agent Cloud.

The package is deliberately light at import time: the CLI, the platform and the plugins import what they need.
"""

__version__ = "0.1.0"
