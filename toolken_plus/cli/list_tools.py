"""`toolken-plus tools`: every registered tool, its source package and first doc line.

    toolken-plus tools                 name, package, first documentation line
    toolken-plus tools --json          the same with full docs, argument schemas and doc hashes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolken_plus.config import default_data_root
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


def main(argv: list[str] | None = None) -> int:
    """List every registered tool (exit status 1 when a plugin failed to load)."""
    parser = argparse.ArgumentParser(
        prog="toolken-plus tools",
        description=f"List every tool installed through the entry-point group {GROUP!r} (built-in packs included). "
                    "Exit status 1 when a plugin failed to load or two tools share a name (reported on stderr).")
    parser.add_argument("--json", action="store_true", help="machine-readable output: full docs, doc hashes, argument schemas")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="data folder for packs whose demos/docs live there (default: the first folder holding "
                             "gsm8k-xl/, see `toolken-plus data where`)")
    return list_tools(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
