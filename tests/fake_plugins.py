"""Installed-looking plugin distributions for tests: a folder with
`<name>.dist-info/{METADATA,entry_points.txt}` and the modules they name.
Put on sys.path (or PYTHONPATH), `importlib.metadata` finds them exactly as
it finds a pip-installed package."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

WEATHER_DOC = 'Current weather of a city: weather("Paris") = "sunny, 21 C".'

WEATHER_MODULE = f'''
from toolken_plus import tool

@tool(demos=['Question: How warm is it in Paris?\\nAnswer: It is <weather>("Paris")=sunny, 21 C in Paris.'])
def weather(city: str) -> str:
    """{WEATHER_DOC}

    Knows a few cities; others are cloudy."""
    return {{"Paris": "sunny, 21 C", "Oslo": "snow, -3 C"}}.get(city, "cloudy, 15 C")

trip = tool.doc_only("trip_planner", "Plans trips: flights, hotels and day-by-day itineraries.")
'''

BROKEN_MODULE = "import no_such_module_for_toolken_tests\n"

UNDOCUMENTED_MODULE = '''
def undocumented(x: int) -> int:
    return x

SETTINGS = {"not": "a tool"}
'''

CLASH_MODULE = '''
from toolken_plus import tool

@tool
def add(a: float, b: float) -> str:
    """Adds two numbers (a second tool called add)."""
    return str(a + b)
'''


# Plugins that try to end or hijack the process while loading.
EXIT_MODULE = "import sys\nsys.exit(3)\n"

EXIT_PACK_MODULE = '''
import sys
from toolken_plus import ToolPack

def _tools(data_root):
    sys.exit("no tools today")

PACK = ToolPack("quitter", _tools)
'''

BASE_EXCEPTION_MODULE = '''
class Escape(BaseException):
    """Not an Exception: `except Exception` does not stop it."""

raise Escape("out of here")
'''

STDOUT_MODULE = '''
import io
import sys

from toolken_plus import tool

sys.stdout = io.StringIO()  # everything printed afterwards would vanish

@tool
def hush(text: str) -> str:
    """Repeats the text quietly."""
    return text
'''

HOSTILE_ERROR_MODULE = '''
import sys

class HostileError(Exception):
    def __str__(self):  # even showing the error ends the program
        sys.exit(4)

raise HostileError()
'''

INTERRUPT_MODULE = "raise KeyboardInterrupt\n"  # as if the user pressed Ctrl-C during the import


def make_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[toolken_plus.tools]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


def weather_distribution(root: Path) -> Path:
    return make_distribution(root, "weather-tools", {"weather": "weather_tools"}, {"weather_tools": WEATHER_MODULE})


def bad_distribution(root: Path) -> Path:
    return make_distribution(root, "bad-tools",
                             {"broken": "broken_tools", "nodoc": "undocumented_tools:undocumented",
                              "notcallable": "undocumented_tools:SETTINGS"},
                             {"broken_tools": BROKEN_MODULE, "undocumented_tools": UNDOCUMENTED_MODULE})


def clash_distribution(root: Path) -> Path:
    return make_distribution(root, "clash-tools", {"adder": "clash_tools"}, {"clash_tools": CLASH_MODULE})


def exiting_distribution(root: Path) -> Path:
    return make_distribution(root, "exit-tools",
                             {"quits": "exit_tools", "packquits": "exit_pack_tools:PACK",
                              "escapes": "escape_tools", "hijacks": "stdout_tools", "hostile": "hostile_tools"},
                             {"exit_tools": EXIT_MODULE, "exit_pack_tools": EXIT_PACK_MODULE,
                              "escape_tools": BASE_EXCEPTION_MODULE, "stdout_tools": STDOUT_MODULE,
                              "hostile_tools": HOSTILE_ERROR_MODULE})


def interrupt_distribution(root: Path) -> Path:
    return make_distribution(root, "interrupt-tools", {"ctrlc": "interrupt_tools"}, {"interrupt_tools": INTERRUPT_MODULE})


PLUGIN_MODULES = ("weather_tools", "broken_tools", "undocumented_tools", "clash_tools", "exit_tools",
                  "exit_pack_tools", "escape_tools", "stdout_tools", "hostile_tools", "interrupt_tools")


def weather_examples(n: int = 8) -> list[dict]:
    """Call-span training examples for the weather tool (task=custom JSONL rows)."""
    cities = [("Paris", "sunny, 21 C"), ("Oslo", "snow, -3 C"), ("Rome", "cloudy, 15 C"), ("Lima", "cloudy, 15 C")]
    rows = []
    for i in range(n):
        city, result = cities[i % len(cities)]
        text = f"Question: What is the weather in {city} today?\nAnswer: Right now it is {result} in {city}."
        start = text.index(result)
        rows.append({"text": text, "calls": [{"tool": "weather", "start": start, "end": start + len(result), "args": [city]}]})
    return rows


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Put fake plugin distributions on sys.path; forget their modules afterwards."""

    def _install(*makers) -> Path:
        root = tmp_path / "site"
        for make in makers:
            make(root)
        monkeypatch.syspath_prepend(str(root))  # also invalidates importlib's caches
        return root

    yield _install
    for m in PLUGIN_MODULES:
        sys.modules.pop(m, None)
