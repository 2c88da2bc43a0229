"""The `toolken-plus` command (training and inference are `train.py` / `infer.py`).

    toolken-plus tools                 every registered tool: name, source package, first doc line
    toolken-plus tools --json          the same with full docs, argument schemas and doc hashes
    toolken-plus report DIR… [--out OUT]
                                       one markdown report (tables, PNG plots) of every train.py and
                                       infer.py run under the DIRs, in OUT/report.md (default reports/)
    toolken-plus data download [--to DIR] [--only NAME…] [--base-url URL]
                                       fetch the datasets from their public sources, sha256-checked
    toolken-plus data list | where     each dataset, its source and licence, where it is found
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolken_plus.config import default_data_root
from toolken_plus.data import download as data_download
from toolken_plus.data.locate import find_dataset
from toolken_plus.tools.plugins import GROUP, ToolRegistry, discover_tools
from toolken_plus.tools.registry import doc_hash


def _tool_records(registry: ToolRegistry) -> list[dict]:
    out = []
    for t in registry:
        origin = registry.origin(t.name)
        schema = t.schema()
        out.append({
            "name": t.name,
            "package": origin.package,
            "plugin": origin.plugin,
            "target": origin.target,
            "summary": t.summary,
            "doc": t.doc,
            "doc_hash": doc_hash(t.doc),
            "doc_only": t.doc_only,
            "has_demos": t.demo_prompt is not None,
            "parameters": schema.get("parameters"),
        })
    return out


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def list_tools(args) -> int:
    if args.data_root is None:  # the built-in calculator's demos and docs are in gsm8k-xl/
        args.data_root = find_dataset("gsm8k-xl") or default_data_root()
    registry = discover_tools(args.data_root)
    records = _tool_records(registry)
    problems = [str(p) for p in registry.problems] + [registry.conflict_message(n) for n in registry.conflicts]
    if args.json:
        json.dump({"tools": records, "problems": problems}, sys.stdout, indent=2)
        print()
    else:
        w_name = max([len(r["name"]) for r in records] + [4])
        w_pkg = max([len(r["package"]) for r in records] + [7])
        print(f"{'tool':<{w_name}}  {'package':<{w_pkg}}  documentation")
        for r in records:
            kind = " [doc-only]" if r["doc_only"] else ""
            print(f"{r['name']:<{w_name}}  {r['package']:<{w_pkg}}  {_shorten(r['summary'], 100)}{kind}")
        print(f"{len(records)} tools")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolken-plus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tools = sub.add_parser(
        "tools", help="list every registered tool",
        description=f"List every tool installed through the entry-point group {GROUP!r} (built-in packs included). "
                    "Exit status 1 when a plugin failed to load or two tools share a name (reported on stderr).")
    tools.add_argument("--json", action="store_true", help="machine-readable output: full docs, doc hashes, argument schemas")
    tools.add_argument("--data-root", type=Path, default=None,
                       help="data folder for packs whose demos/docs live there (default: the first folder holding "
                            "gsm8k-xl/, see `toolken-plus data where`)")
    tools.set_defaults(run=list_tools)
    # Imported here, not at the top: toolken_plus.cli imports this module, and `python -m
    # toolken_plus.cli.compare` (which report imports) warns when the package loaded it already.
    import toolken_plus.cli.report as report

    rep = sub.add_parser("report", help="one markdown report across benchmarks and methods",
                         description=report.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_arguments(rep)
    rep.set_defaults(run=report.run)
    dat = sub.add_parser("data", help="download the datasets, list them, show where they are read from",
                         description=data_download.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_download.add_arguments(dat)
    dat.set_defaults(run=data_download.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
