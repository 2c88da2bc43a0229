"""Tool plugins: entry-point discovery, bad plugins, name clashes, the
`toolken-plus tools` listing, and the agent finding a checkpoint's tools by
name. (Training a plugin's tool into a checkpoint: test_add_tools.py.)"""

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import DATA_ROOT
from fake_plugins import (  # noqa: F401
    WEATHER_DOC,
    bad_distribution,
    clash_distribution,
    exiting_distribution,
    install,
    interrupt_distribution,
    weather_distribution,
)

from toolken_plus.adapter.head import ToolkenHead, checkpoint_tools
from toolken_plus.tasks.gsm8k import calculator_tools
from toolken_plus.tools.plugins import GROUP, ToolConflictError, UnknownToolError, discover_tools
from toolken_plus.tools.registry import doc_hash

CALCULATOR = ["add", "subtract", "multiply", "divide"]
PROMPT = "Answer the question.\n\nQuestion: [QUESTION]\nAnswer:"


def _cli(args, pythonpath: Path | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOOLKEN_PLUS_DATA": str(DATA_ROOT)}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])
    exe = Path(sys.executable).with_name("toolken-plus")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


# ------------------------------------------------------------------ discovery
def test_builtin_calculator_is_an_entry_point_plugin(data_root):
    assert "calculator" in {ep.name for ep in entry_points(group=GROUP)}  # declared in pyproject.toml
    reg = discover_tools(data_root)
    assert reg.names[:4] == CALCULATOR
    assert {reg.origin(n).package for n in CALCULATOR} == {"toolken_plus"}
    # the same docs and demos as the GSM8K-XL recipe uses, so checkpoint doc hashes match
    direct = calculator_tools(data_root)
    for n in CALCULATOR:
        assert reg.get(n).doc == direct[n].doc and reg.get(n).demo_prompt == direct[n].demo_prompt
    assert reg.get("add")(2, 3) == "5"
    assert not [p for p in reg.problems if p.origin.package == "toolken_plus"]


def test_external_plugin_is_discovered(install):
    install(weather_distribution)
    reg = discover_tools()
    weather, trip = reg.get("weather"), reg.get("trip_planner")
    assert reg.origin("weather").package == "weather-tools" and "weather-tools" in weather.source
    assert weather.summary == WEATHER_DOC and weather("Oslo") == "snow, -3 C"
    assert weather.schema()["parameters"] == {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]}
    assert weather.demo_prompt is not None and '<weather>("Paris")' in weather.demo_prompt.prefix
    assert trip.doc_only and trip.fn is None
    assert set(CALCULATOR) <= set(reg.names)  # built-ins still there


def test_bad_plugins_are_reported_by_name_and_the_rest_load(install):
    install(weather_distribution, bad_distribution)
    reg = discover_tools()
    problems = {p.origin.plugin: str(p) for p in reg.problems}
    assert set(problems) == {"broken", "nodoc", "notcallable"}
    assert "no_such_module_for_toolken_tests" in problems["broken"] and "bad-tools" in problems["broken"]
    assert "no documentation" in problems["nodoc"] and "undocumented" in problems["nodoc"]
    assert "dict" in problems["notcallable"] and "not a tool" in problems["notcallable"]
    assert {"weather", "trip_planner", *CALCULATOR} <= set(reg.names)
    with pytest.raises(UnknownToolError, match="nodoc"):  # asking for a missing tool shows what failed
        reg.get("undocumented")


def test_plugins_that_exit_or_take_over_stdout_are_reported_and_the_rest_load(install):
    install(weather_distribution, exiting_distribution)
    stdout = sys.stdout
    reg = discover_tools()
    assert sys.stdout is stdout  # the hijacker's replacement was undone
    problems = {p.origin.plugin: str(p) for p in reg.problems}
    assert set(problems) == {"quits", "packquits", "escapes", "hijacks", "hostile"}
    assert problems["quits"] == "tool plugin 'quits' from exit-tools (exit_tools): called sys.exit(3) while importing"
    assert "called sys.exit('no tools today') while loading its tools" in problems["packquits"]
    assert "raised Escape: out of here while importing" in problems["escapes"]
    assert "replaced sys.stdout while importing" in problems["hijacks"]
    assert "cannot import it: HostileError: (its message cannot be shown)" in problems["hostile"]
    assert "hush" not in reg.names  # a plugin that misbehaves is not half-loaded
    assert {"weather", *CALCULATOR} <= set(reg.names)


def test_ctrl_c_while_a_plugin_imports_still_stops_the_program(install):
    install(interrupt_distribution, weather_distribution)
    with pytest.raises(KeyboardInterrupt):
        discover_tools()


def test_checkpoint_needing_a_tool_of_an_exiting_plugin_names_the_plugin(install, tmp_path):
    install(exiting_distribution)
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    ToolkenHead(["add", "quit_tool"], 8).save_pretrained(checkpoint)
    with pytest.raises(UnknownToolError) as err:
        checkpoint_tools(checkpoint)
    msg = str(err.value)
    assert "no registered tool 'quit_tool'" in msg and "Plugins that failed to load" in msg
    assert "'quits' from exit-tools (exit_tools): called sys.exit(3) while importing" in msg


def test_same_tool_name_twice_is_an_error_naming_both_sources(install):
    install(clash_distribution, weather_distribution)
    reg = discover_tools()
    with pytest.raises(ToolConflictError) as err:
        reg.get("add")
    msg = str(err.value)
    assert "toolken_plus (entry point calculator" in msg and "clash-tools (entry point adder = clash_tools)" in msg
    assert "add" not in reg.names and {"subtract", "weather"} <= set(reg.names)
    with pytest.raises(ToolConflictError):
        reg.resolve(["weather", "add"])


# ------------------------------------------------------------------------ CLI
def test_cli_lists_tools_with_source_and_first_doc_line(tmp_path, data_root):
    site = weather_distribution(tmp_path / "site")
    proc = _cli(["tools", "--data-root", str(data_root)], site)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:-1]}
    assert {*CALCULATOR, "weather", "trip_planner"} <= set(lines)  # (and whatever else is installed here)
    assert "weather-tools" in lines["weather"] and WEATHER_DOC in lines["weather"]
    assert "toolken_plus" in lines["add"] and "[doc-only]" in lines["trip_planner"]

    proc = _cli(["tools", "--json", "--data-root", str(data_root)], site)
    data = json.loads(proc.stdout)
    by_name = {t["name"]: t for t in data["tools"]}
    assert by_name["weather"]["package"] == "weather-tools" and by_name["weather"]["doc_hash"] == doc_hash(
        by_name["weather"]["doc"])
    assert by_name["weather"]["parameters"]["properties"] == {"city": {"type": "string"}}
    assert by_name["add"]["has_demos"] and not [p for p in data["problems"] if "weather-tools" in p]


def test_cli_reports_bad_plugins_and_exits_nonzero(tmp_path):
    site = bad_distribution(tmp_path / "site")
    proc = _cli(["tools"], site)
    assert proc.returncode == 1
    for name in ("'broken'", "'nodoc'", "'notcallable'"):
        assert name in proc.stderr
    assert "add" in proc.stdout  # the others still listed
    assert _cli(["tools", "--help"]).returncode == 0


def test_cli_reports_a_plugin_that_exits_and_still_lists_the_others(tmp_path):
    site = exiting_distribution(weather_distribution(tmp_path / "site"))
    proc = _cli(["tools"], site)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "'quits' from exit-tools" in proc.stderr and "called sys.exit(3) while importing" in proc.stderr
    assert "replaced sys.stdout" in proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines()[1:-1]}
    assert {"weather", *CALCULATOR} <= names

    proc = _cli(["tools", "--json"], site)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert "weather" in {t["name"] for t in data["tools"]}
    assert any("sys.exit(3)" in p for p in data["problems"])


def test_agent_names_a_missing_plugin(tmp_path, tiny_backbone, data_root):
    from toolken_plus.infer.recipe import load_agent

    ToolkenHead(["add", "weather"], tiny_backbone.hidden_size).save_pretrained(tmp_path, backbone=tiny_backbone,
                                                                              task={"name": "gsm8k_xl"})
    with pytest.raises(UnknownToolError, match="no registered tool 'weather'.*toolken-plus tools"):
        load_agent(tmp_path, backbone=tiny_backbone, data_root=data_root, prompt=PROMPT)
