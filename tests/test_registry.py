"""The @tool decorator, doc-only tools, tool packs, and the calculator pack."""

import json
import re
from pathlib import Path

import pytest

from toolken_plus import Tool, ToolPack, tool
from toolken_plus.tasks.gsm8k import calculator_tools
from toolken_plus.tools.calls import ToolArgumentError, bind_arguments, coerce_arguments, parse_arguments, parse_call_arguments
from toolken_plus.tools.plugins import Origin, ToolRegistry, discover_tools, tools_of
from toolken_plus.tools.registry import ToolDefinitionError, doc_hash


def test_tool_reads_name_doc_and_signature():
    @tool
    def c_to_f(celsius: float, digits: int = 1) -> str:
        """Convert degrees Celsius to degrees Fahrenheit.

        Example: c_to_f(100) = 212."""
        return f"{round(celsius * 9 / 5 + 32, digits):g}"

    assert isinstance(c_to_f, Tool) and c_to_f.name == "c_to_f"
    assert c_to_f.summary == "Convert degrees Celsius to degrees Fahrenheit."
    assert "c_to_f(100) = 212" in c_to_f.doc
    assert c_to_f(100) == "212"  # still callable like the function
    assert c_to_f.schema()["parameters"] == {
        "type": "object", "properties": {"celsius": {"type": "number"}, "digits": {"type": "integer"}},
        "required": ["celsius"]}
    # the agent checks parsed arguments against the same signature
    assert coerce_arguments(parse_arguments("37"), c_to_f.signature) == [37]
    assert c_to_f.source == __name__ and c_to_f.demo_prompt is None


def test_tool_options_name_doc_and_demos():
    @tool(name="f2c", doc="Fahrenheit to Celsius.", demos=["Question: 212 F in C?\nAnswer: <f2c>(212)=100 C."])
    def convert(f: float) -> str:
        return str((f - 32) * 5 / 9)

    assert convert.name == "f2c" and convert.doc == "Fahrenheit to Celsius."
    demo = convert.demo_prompt
    assert demo.prefix.startswith("Answer the following questions with <f2c>") and "<f2c>(212)=100 C." in demo.prefix
    assert demo.render("What is 50 F?").endswith("Question: What is 50 F?\nAnswer:")


def test_demos_from_a_template_file(data_root):
    path = Path(data_root / "gsm8k-xl/template/llama_add.txt")
    t = tool(lambda *a: "0", name="adder", doc="adds", demos=path)
    first_call = re.search(r"<add>\([^)]*\)=[\d.]+", path.read_text()).group()  # e.g. <add>(0.95, 0.85)=1.80
    assert first_call in t.demo_prompt.prefix and "[QUESTION]" not in t.demo_prompt.prefix


def test_doc_only_tool():
    t = tool.doc_only("TripPlanner", "Plans trips.\nFlights and hotels.")
    assert t.doc_only and t.summary == "Plans trips." and t.schema() == {
        "name": "TripPlanner", "description": "Plans trips.\nFlights and hotels.", "doc_only": True}
    with pytest.raises(TypeError, match="documentation-only"):
        t()


@pytest.mark.parametrize("make, message", [
    (lambda: tool(lambda x: x), "bad tool name '<lambda>'"),
    (lambda: tool(lambda x: x, name="has space", doc="d"), "bad tool name 'has space'"),
    (lambda: tool(42), "needs a callable"),
    (lambda: tool.doc_only("empty", "  "), "no documentation"),
])
def test_bad_definitions_are_clear_errors(make, message):
    with pytest.raises(ToolDefinitionError, match=message):
        make()


def test_missing_docstring_names_the_function():
    def helper(x: int) -> int:
        return x

    with pytest.raises(ToolDefinitionError, match=r"tool 'helper' \(.*helper\) has no documentation"):
        tool(helper)


def test_tool_pack_and_module_targets():
    a = tool(lambda x: x, name="a", doc="first")
    b = tool(lambda x: x, name="b", doc="second")
    static = ToolPack("ab", [a, b])
    lazy = ToolPack("lazy", lambda root: [tool(lambda: str(root), name="where", doc="the data root")])
    assert [t.name for t in tools_of(static, None, "x:PACK")] == ["a", "b"]
    (where,) = tools_of(lazy, Path("/data"), "x:LAZY")
    assert where() == "/data"
    with pytest.raises(ToolDefinitionError, match="not a tool"):
        tools_of(3.5, None, "x:NUMBER")
    with pytest.raises(ToolDefinitionError, match="not a Tool"):
        tools_of(ToolPack("bad", ["a string"]), None, "x:BAD")


def test_registry_accepts_the_same_tool_twice_but_not_two_tools_with_one_name():
    reg = ToolRegistry()
    a = tool(lambda x: x, name="a", doc="first")
    reg.register(a, Origin("pkg-one", "one", "m1"))
    reg.register(a, Origin("pkg-two", "two", "m1:a"))  # re-exported, same object: fine
    assert reg.names == ["a"]
    reg.register(tool(lambda x: x, name="a", doc="other"), Origin("pkg-three", "three", "m3"))
    assert reg.names == [] and "pkg-one" in reg.conflict_message("a") and "pkg-three" in reg.conflict_message("a")


def test_tools_from_code_join_the_registry():
    mine = tool(lambda city: "sunny", name="my_weather", doc="Weather.")
    reg = discover_tools(extra=[mine])
    assert reg.get("my_weather").doc == "Weather." and "add" in reg


def test_calculator_tools_keep_their_docs_and_demos(data_root):
    from toolken_plus_tools import calculator

    tools = calculator_tools(data_root)
    assert list(tools) == ["add", "subtract", "multiply", "divide"]
    assert all(t.demo_prompt is not None for t in tools.values())
    tecton = json.loads((data_root / "gsm8k-xl" / "tecton_doc_dict.json").read_text())
    assert tools["add"].doc.startswith(tecton["<add>"]["overview"])  # tecton_doc_dict.json, what checkpoints hashed
    assert calculator.add(2, 3) == "5"  # the module's functions are unchanged
    without_data = {t.name: t for t in calculator.tools(None)}
    assert without_data["add"].doc.startswith("Add two or more numbers") and without_data["add"].demo_prompt is None
    assert doc_hash(tools["add"].doc) != doc_hash(without_data["add"].doc)
    with pytest.raises(FileNotFoundError, match="llama_add.txt"):
        calculator_tools(Path("/no/such/data"))


def test_call_example_runs_the_tool_and_records_the_span():
    from toolken_plus.tools.examples import call_example

    @tool
    def c_to_f(celsius: float) -> str:
        """Convert degrees Celsius to degrees Fahrenheit."""
        return f"{celsius * 9 / 5 + 32:g}"

    row = call_example("Answer: 100 C is <<c_to_f(100)>> F and 0 C is <<c_to_f(0)>> F.", [c_to_f])
    assert row["text"] == "Answer: 100 C is 212 F and 0 C is 32 F."
    spans = [row["text"][c["start"]:c["end"]] for c in row["calls"]]
    assert spans == ["212", "32"] and row["calls"][0] == {"tool": "c_to_f", "start": 17, "end": 20, "args": [100]}
    with pytest.raises(ValueError, match="unknown tool 'f_to_c'.*c_to_f"):
        call_example("x <<f_to_c(1)>>", [c_to_f])
    with pytest.raises(ValueError, match="bad arguments in '<<c_to_f\\(\"hot\"\\)>>'"):
        call_example('x <<c_to_f("hot")>>', [c_to_f])
    with pytest.raises(ValueError, match="no <<tool"):
        call_example("no calls", [c_to_f])


def test_tools_take_keyword_arguments():
    from toolken_plus.tools.examples import call_example

    @tool
    def forecast(city: str, days: int = 1, *, units: str = "C") -> str:
        """The weather of a city for the next days."""
        return f"{city}: {days} day(s) in {units}"

    call = bind_arguments(parse_call_arguments('city="Paris", days=3'), forecast.signature)
    assert (call.args, call.kwargs) == (["Paris", 3], {}) and forecast(*call.args) == "Paris: 3 day(s) in C"
    with pytest.raises(ToolArgumentError, match="unknown keyword argument 'town'"):
        bind_arguments(parse_call_arguments('town="Paris"'), forecast.signature)
    row = call_example('Rome: <<forecast("Rome", units="F")>>. Oslo: <<forecast(city="Oslo")>>.', [forecast])
    assert row["text"] == "Rome: Rome: 1 day(s) in F. Oslo: Oslo: 1 day(s) in C."
    first, second = row["calls"]
    assert (first["args"], first["kwargs"]) == (["Rome"], {"units": "F"})
    assert second.keys() == {"tool", "start", "end", "args"} and second["args"] == ["Oslo"]  # bound by position
    assert row["text"][second["start"]:second["end"]] == "Oslo: 1 day(s) in C"
    with pytest.raises(ValueError, match="missing required argument 'city'"):
        call_example("x <<forecast(days=2)>>", [forecast])

    @tool
    def tagged(name: str, **tags: str) -> str:
        """A name with any tags."""
        return name

    params = tagged.schema()["parameters"]
    assert params["required"] == ["name"] and params["additionalProperties"] == {"type": "string"}


# --- every way a tool is made is checked (name and documentation) -----------


def _fn(x: float) -> str:
    return str(x)


@pytest.mark.parametrize("make, message", [
    (lambda: Tool("a<b>", _fn, "doc"), r"bad tool name 'a<b>' \(from test_registry\._fn"),
    (lambda: Tool("my tool", _fn, "doc"), "bad tool name 'my tool'"),
    (lambda: Tool("", _fn, "doc"), "bad tool name ''"),
    (lambda: Tool(None, _fn, "doc"), "bad tool name None"),
    (lambda: Tool("fine", _fn, ""), r"tool 'fine' \(test_registry\._fn\) has no documentation"),
    (lambda: Tool("fine", _fn, "  \n"), "has no documentation"),
    (lambda: Tool("fine", _fn, None), "has no documentation"),
    (lambda: Tool("fine", 42, "doc"), "fn must be callable"),
    (lambda: Tool("planner", None, ""), r"tool 'planner' \(documentation-only tool\) has no documentation"),
    (lambda: Tool("x", _fn, "", source="some-dist (entry point x = m:x)"), r"some-dist \(entry point x = m:x\)"),
    (lambda: tool(_fn, name="a(b)"), "bad tool name 'a\\(b\\)'"),
    (lambda: tool(_fn, doc=""), "tool '_fn' .* has no documentation"),
    (lambda: tool.doc_only("has space", "Plans trips."), "bad tool name 'has space'"),
])
def test_tools_made_directly_are_checked_too(make, message):
    with pytest.raises(ToolDefinitionError, match=message):
        make()


def test_replace_and_packs_go_through_the_same_checks():
    from dataclasses import replace

    good = Tool("echo", _fn, "Echoes a number.")
    assert replace(good, source="x").source == "x"
    with pytest.raises(ToolDefinitionError, match="bad tool name 'e cho'"):
        replace(good, name="e cho")
    with pytest.raises(ToolDefinitionError, match="'echo' .* has no documentation"):
        replace(good, doc="")
    # a pack's loader making an undocumented tool fails where the pack loads
    # (discovery reports it as that plugin's problem and loads the others)
    pack = ToolPack("p", lambda root: [good, Tool("blank", _fn, "")])
    with pytest.raises(ToolDefinitionError, match="'blank'"):
        tools_of(pack, None, "m:PACK")


def test_a_plugin_pack_with_a_bad_tool_is_reported_not_registered(tmp_path, monkeypatch):
    import sys
    import textwrap

    module = textwrap.dedent('''
        from toolken_plus import Tool, ToolPack

        def f(x: float) -> str:
            return str(x)

        PACK = ToolPack("bad", lambda root: [Tool("ok_one", f, "Fine."), Tool("my tool", f, "Spaces.")])
        EMPTY = ToolPack("empty", lambda root: [Tool("undocumented_one", f, "")])
    ''')
    info = tmp_path / "badpack_tools-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: badpack-tools\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[toolken_plus.tools]\nbadname = badpack_mod:PACK\nnodoc = badpack_mod:EMPTY\n")
    (tmp_path / "badpack_mod.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        reg = discover_tools()
    finally:
        sys.modules.pop("badpack_mod", None)
    problems = {p.origin.plugin: str(p) for p in reg.problems}
    assert "bad tool name 'my tool'" in problems["badname"]
    assert "'undocumented_one'" in problems["nodoc"] and "no documentation" in problems["nodoc"]
    assert not {"ok_one", "my tool", "undocumented_one"} & set(reg.names)


def test_calculator_tools_build_with_and_without_data(data_root):
    from toolken_plus_tools import calculator

    assert [t.name for t in calculator.tools(None)] == ["add", "subtract", "multiply", "divide"]
    assert all(t.doc for t in calculator.tools(data_root))
