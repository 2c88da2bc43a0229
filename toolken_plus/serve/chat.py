"""`toolken-plus chat`: a question per line, the agent's reply and its tool calls."""

from __future__ import annotations

import sys
from typing import TextIO


def format_reply(result) -> str:
    """The agent's reply as the REPL prints it: the text, each tool call, the answer."""
    lines = [result.generation.strip() or "(no text)"]
    for c in result.calls:
        outcome = f"= {c.result}" if c.result is not None else f"failed: {c.error}"
        lines.append(f"  [tool] {c.tool}({c.args_text}) {outcome}")
    lines.append(f"  [answer] {result.answer!r} ({result.finish_reason}, {result.new_tokens} tokens)")
    lines += [f"  [note] {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def chat_loop(agent, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Each line of `stdin` is a question; the reply and its tool calls go to
    `stdout`. Ends at end of input (Ctrl-D), `/quit` or Ctrl-C."""
    interactive = stdin.isatty()
    if interactive:
        stdout.write(f"{agent.backbone.name}, task {getattr(agent.task, 'name', None)}, tools: "
                     f"{', '.join(agent.head.tool_names) if agent.head is not None else 'none'}. "
                     f"A question per line; /quit or Ctrl-D ends.\n")
    while True:
        try:
            line = input("you> ") if interactive and stdin is sys.stdin else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            line = ""
        if not line:
            break
        question = line.strip()
        if question in ("/quit", "/exit"):
            break
        if not question:
            continue
        try:
            stdout.write(format_reply(agent.run(question)))
        except KeyboardInterrupt:
            stdout.write("(interrupted)\n")
        stdout.flush()
    return 0
