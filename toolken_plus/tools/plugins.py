"""Find every installed tool through the entry-point group `toolken_plus.tools`.

A package publishes tools in its pyproject.toml:

    [project.entry-points."toolken_plus.tools"]
    weather = "weather_tools"                  # a module: its @tool functions and ToolPacks
    units = "weather_tools.units:PACK"         # a ToolPack, a Tool, or a plain documented function

The built-in packs in `tools/` register the same way (this project's
pyproject.toml). Discovery never fails as a whole: a plugin that does not
import, or yields something that is not a documented tool, is recorded in
`ToolRegistry.problems` with the plugin's name and logged, and the other
plugins still load. Two different tools with one name are a conflict: the name
is withheld and asking for it raises an error naming both sources.

Plugin code cannot end the program while it loads: `sys.exit()` and other
BaseExceptions are reported like any other failure (only KeyboardInterrupt, the
user's Ctrl-C, goes through), and a plugin that replaces sys.stdin, sys.stdout
or sys.stderr gets them put back and is reported, its tools not loaded (the
listing must still be printed). What cannot be caught in
this process is a plugin calling `os._exit()` (or crashing the interpreter) at
import: that ends the program on the spot. Only running plugin code in another
process guards against it (see toolken_plus/tools/isolation.py for tool calls).
"""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from toolken_plus.tools.registry import Tool, ToolDefinitionError, ToolPack, tool

log = logging.getLogger(__name__)

GROUP = "toolken_plus.tools"
BUILTIN_PACKAGE = "toolken_plus"

# The two steps that run a plugin's code, as problem reports name them.
IMPORTING = "while importing"
LOADING = "while loading its tools"
_STD_STREAMS = ("stdin", "stdout", "stderr")

_T = TypeVar("_T")


class UnknownToolError(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ToolConflictError(ValueError):
    """Two plugins define a tool with the same name."""


@dataclass(frozen=True)
class Origin:
    """Where a registered tool comes from."""

    package: str  # the distribution that declares the entry point
    plugin: str  # the entry point's name
    target: str  # what it names: "module" or "module:attribute"

    def __str__(self) -> str:
        if not self.plugin:  # a tool handed over in code, not installed
            return self.package
        return f"{self.package} (entry point {self.plugin} = {self.target})"


@dataclass(frozen=True)
class PluginProblem:
    origin: Origin
    message: str

    def __str__(self) -> str:
        return f"tool plugin {self.origin.plugin!r} from {self.origin.package} ({self.origin.target}): {self.message}"


class ToolRegistry:
    """Tools by name, with where each came from and what failed to load."""

    def __init__(self):
        self._tools: dict[str, Tool] = {}
        self._origins: dict[str, Origin] = {}
        self._conflicts: dict[str, list[Origin]] = {}
        self.problems: list[PluginProblem] = []

    # ------------------------------------------------------------ building
    def register(self, t: Tool, origin: Origin) -> None:
        if not isinstance(t, Tool):
            raise ToolDefinitionError(f"expected a Tool, got {type(t).__name__} {t!r}")
        name = t.name
        if name in self._conflicts:
            self._conflicts[name].append(origin)
            return
        if name in self._tools:
            if self._tools[name].fn is t.fn and self._tools[name].doc == t.doc:
                return  # the same tool reached through two entry points: not a conflict
            self._conflicts[name] = [self._origins.pop(name), origin]
            del self._tools[name]
            log.warning("%s", self.conflict_message(name))
            return
        self._tools[name] = replace(t, source=str(origin))
        self._origins[name] = origin

    def report(self, origin: Origin, message: str) -> None:
        problem = PluginProblem(origin, message)
        self.problems.append(problem)
        log.warning("%s; the other tools still load", problem)

    # ------------------------------------------------------------- queries
    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __iter__(self):
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def origin(self, name: str) -> Origin:
        return self._origins[name]

    @property
    def conflicts(self) -> dict[str, list[Origin]]:
        return dict(self._conflicts)

    def conflict_message(self, name: str) -> str:
        sources = " and ".join(str(o) for o in self._conflicts[name])
        return f"two tools are named {name!r}: {sources}; uninstall or rename one of them"

    def get(self, name: str) -> Tool:
        if name in self._tools:
            return self._tools[name]
        if name in self._conflicts:
            raise ToolConflictError(self.conflict_message(name))
        failed = "".join(f"\n  {p}" for p in self.problems)
        raise UnknownToolError(
            f"no registered tool {name!r}; registered: {sorted(self._tools) or 'none'}. Install the package that "
            f"provides it (entry-point group {GROUP!r}); `toolken-plus tools` lists what is installed"
            + (f". Plugins that failed to load:{failed}" if failed else ""))

    def resolve(self, names: Iterable[str]) -> dict[str, Tool]:
        """The named tools, in the given order; an error lists every missing one."""
        names = list(names)
        missing = [n for n in names if n not in self._tools]
        if missing:
            if len(missing) == 1:
                self.get(missing[0])  # raises with the full explanation
            errors = []
            for n in missing:
                try:
                    self.get(n)
                except (UnknownToolError, ToolConflictError) as err:
                    errors.append(str(err))
            raise UnknownToolError(f"{len(missing)} tools are not available: {missing}\n" + "\n".join(errors))
        return {n: self._tools[n] for n in names}


def _entry_points(group: str) -> list[EntryPoint]:
    eps = list(entry_points(group=group))
    # Built-ins first, then by package and name: a stable listing and conflict order.
    return sorted(eps, key=lambda ep: (_package(ep) != BUILTIN_PACKAGE, _package(ep), ep.name))


def _package(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "?"


def tools_of(obj, data_root: Path | None, target: str) -> list[Tool]:
    """What one entry point's target contributes, checked."""
    if isinstance(obj, types.ModuleType):
        found = [v for v in vars(obj).values() if isinstance(v, (Tool, ToolPack))]
        if not found:
            raise ToolDefinitionError(f"module {obj.__name__} defines no tools (decorate functions with @tool, or add a ToolPack)")
        return [t for item in found for t in tools_of(item, data_root, target)]
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, ToolPack):
        made = obj.load(data_root)
        bad = [m for m in made if not isinstance(m, Tool)]
        if bad:
            raise ToolDefinitionError(f"tool pack {obj.name!r} yielded {type(bad[0]).__name__} {bad[0]!r}, not a Tool")
        return made
    if isinstance(obj, type) or not callable(obj):
        raise ToolDefinitionError(f"{target} is a {type(obj).__name__}, not a tool, tool pack, module or function")
    return [tool(obj)]  # a plain function: name and docs from the function itself


def _run_plugin_code(action: Callable[[], _T], step: str) -> tuple[_T | None, str | None]:
    """``(action(), None)``, or ``(None, what the plugin did wrong)``.

    Third-party code may raise anything, SystemExit included (`sys.exit()` in a
    module or a pack's factory): all of it is caught so that one plugin cannot
    end the program, silently, with exit status 0. KeyboardInterrupt is the
    user stopping the program and propagates. Standard streams the plugin
    replaced are put back in every case: the listing and error messages must
    still reach the user.
    """
    streams = {name: getattr(sys, name) for name in _STD_STREAMS}
    try:
        result, problem = action(), None
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # deliberately SystemExit too; see above
        result, problem = None, _describe_failure(err, step)
    finally:
        replaced = [name for name, stream in streams.items() if getattr(sys, name) is not stream]
        for name in replaced:
            setattr(sys, name, streams[name])
    if replaced and problem is None:
        problem = f"replaced {' and '.join(f'sys.{n}' for n in replaced)} {step} (put back)"
    return result, problem


def _describe_failure(err: BaseException, step: str) -> str:
    name = type(err).__name__
    if isinstance(err, SystemExit):
        call = "sys.exit()" if err.code is None else f"sys.exit({_plugin_text(lambda: repr(err.code))})"
        return f"called {call} {step}"
    detail = _plugin_text(lambda: str(err))
    if not isinstance(err, Exception):  # e.g. a plugin's own BaseException subclass
        return f"raised {name}: {detail} {step}"
    return f"cannot import it: {name}: {detail}" if step == IMPORTING else f"{name}: {detail}"


def _plugin_text(text: Callable[[], str]) -> str:
    """str() or repr() of an object from a plugin: its __str__ is plugin code
    too, and may raise (or exit) instead of answering."""
    try:
        return text()
    except KeyboardInterrupt:
        raise
    except BaseException:
        return "(its message cannot be shown)"


def discover_tools(data_root: str | Path | None = None, *, group: str = GROUP, extra: Iterable[Tool] = ()) -> ToolRegistry:
    """Every tool installed through the entry-point group, plus `extra` tools
    defined in the caller's code. `data_root` is handed to packs whose tools
    read demos or docs from the data folder."""
    root = Path(data_root) if data_root else None
    registry = ToolRegistry()
    for ep in _entry_points(group):
        origin = Origin(_package(ep), ep.name, ep.value)
        obj, problem = _run_plugin_code(ep.load, IMPORTING)
        if problem is None:
            found, problem = _run_plugin_code(lambda: tools_of(obj, root, ep.value), LOADING)
        if problem is not None:
            registry.report(origin, problem)
            continue
        for t in found:
            registry.register(t, origin)
    for t in extra:
        registry.register(t, Origin(t.source or "your code", "", ""))
    return registry
