"""The `toolken-plus` command: one subcommand per entry of COMMANDS.

    toolken-plus train <Hydra overrides…>   train toolkens; the same overrides as `python train.py`
    toolken-plus infer <Hydra overrides…>   answer and score a task's questions; as `python infer.py`
    toolken-plus tools [--json]             every registered tool: name, source package, first doc line
    toolken-plus report DIR… [--out OUT]    one markdown report (tables, PNG plots) of every run under the DIRs
    toolken-plus serve checkpoint=RUN [serve.port=8765] [overrides]
                                            an OpenAI-compatible HTTP API (POST /v1/chat/completions, GET /health)
    toolken-plus chat checkpoint=RUN [overrides]
                                            a question per line; the agent's reply and tool calls
    toolken-plus data download [--to DIR] [--only NAME…] [--base-url URL]
                                            fetch the datasets from their public sources, sha256-checked
    toolken-plus data list | where          each dataset, its source and licence, where it is found
    toolken-plus COMMAND --help             the command's own help (train, infer: Hydra's)
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

# A command takes the arguments after its name and returns an exit status
# (None counts as 0); the first line of its docstring is its line in `--help`.
Command = Callable[[list[str]], int | None]


def lazy(target: str, summary: str) -> Command:
    """The command `module:function`, imported only when it runs: train and
    infer load torch (seconds), which `toolken-plus tools` or `--help` need not."""
    module, _, function = target.partition(":")

    def run(argv: list[str]) -> int | None:
        return getattr(importlib.import_module(module), function)(argv)

    run.__doc__ = summary
    return run


# Adding a subcommand is one line here.
COMMANDS: dict[str, Command] = {
    "train": lazy("toolken_plus.cli.train:main", "train toolkens on a frozen backbone (Hydra overrides, as train.py)"),
    "infer": lazy("toolken_plus.cli.infer:main", "answer and score a task's questions with trained toolkens (as infer.py)"),
    "tools": lazy("toolken_plus.cli.list_tools:main", "list every registered tool"),
    "report": lazy("toolken_plus.cli.report:main", "one markdown report across benchmarks and methods"),
    "serve": lazy("toolken_plus.cli.serve:serve_main", "an OpenAI-compatible HTTP API in front of the agent (Hydra overrides)"),
    "chat": lazy("toolken_plus.cli.serve:chat_main", "talk to the agent in the terminal (Hydra overrides)"),
    "data": lazy("toolken_plus.data.download:data_main", "download the datasets, list them, show where they are read from"),
}


def _summary(command: Command) -> str:
    return (command.__doc__ or "").strip().splitlines()[0] if (command.__doc__ or "").strip() else ""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {_summary(command)}" for name, command in COMMANDS.items()]
    return "\n".join(["usage: toolken-plus COMMAND [ARGS…]", "", "commands:", *lines, "",
                      "`toolken-plus COMMAND --help` shows a command's options."])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("toolken_plus")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"toolken-plus {_version()}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"toolken-plus: unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})\n\n{usage()}", file=sys.stderr)
        return 2
    return command(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
