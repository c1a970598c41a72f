"""A minimal MCP app: deploy it with `mcp-agent deploy app .`"""

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("hello", instructions="A friendly example server.")


@mcp.tool()
def greet(name: str = "world") -> str:
    """Say hello to someone."""
    return f"Hello, {name}!"


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


if __name__ == "__main__":
    mcp.run("streamable-http")
