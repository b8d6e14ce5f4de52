"""A small MCP server for tests, on stdio, written with the MCP Python SDK (PyPI `mcp` 2.x).

Tools:
  remember(text)  appends TEXT and a newline to `mcp-notes.txt` in the server's working directory
                  (the session's workspace) and answers `remembered: TEXT (token: N chars)`, N
                  being the length of $NOTES_TOKEN (a session secret handed to it), 0 when unset.
  notes()         the notes remembered so far.
  pick_colour()   asks the user (an MCP elicitation, a form with one field `colour`) and answers
                  `colour: C`, or `no colour (ACTION)` when declined or cancelled.

Run it as `python notes_server.py` with a Python that has `mcp` (scripts/install-agents.sh makes
one: $CLOUD_AGENT_MCP_PYTHON).
"""

import os

from pydantic import BaseModel

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("notes")
NOTES = "mcp-notes.txt"


@server.tool()
def remember(text: str) -> str:
    """Remember a note in the workspace."""
    with open(NOTES, "a") as f:
        f.write(text + "\n")
    return "remembered: %s (token: %d chars)" % (text, len(os.environ.get("NOTES_TOKEN", "")))


@server.tool()
def notes() -> str:
    """The notes remembered so far."""
    try:
        with open(NOTES) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class Colour(BaseModel):
    colour: str


@server.tool()
async def pick_colour(ctx: Context) -> str:
    """Ask the user which colour to use."""
    result = await ctx.elicit(message="Which colour should the notes be?", schema=Colour)
    if result.action == "accept" and result.data is not None:
        return "colour: %s" % result.data.colour
    return "no colour (%s)" % result.action


if __name__ == "__main__":
    server.run("stdio")
