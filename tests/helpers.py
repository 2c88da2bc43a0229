"""Small builders for test data."""

from toolken_plus.data.examples import Example, ToolCall


def example_with_calls(text: str, calls: list[tuple[str, str]], ex_id: str = "ex") -> Example:
    """An Example whose calls are given as (tool, result text); each result is
    the first occurrence of that text after the next '=' sign."""
    out, pos = [], 0
    for tool, result in calls:
        start = text.index(result, text.index("=", pos))
        out.append(ToolCall(tool, (), result, start, start + len(result)))
        pos = start + len(result)
    return Example(ex_id, text, out)


TOOLS = ["add", "subtract", "multiply", "divide"]
TOOL_INDEX = {t: i for i, t in enumerate(TOOLS)}

SAMPLES = [
    example_with_calls("Question: Natalia sold 48 clips.\nAnswer: She sold 48/2 = 24 clips in May and 48+24 = 72 in all. #### 72",
                       [("divide", "24"), ("add", "72")], "s0"),
    example_with_calls("Question: Weng earns $12.\nAnswer: Weng earns 12/60 = $0.2 per minute, so 0.2 x 50 = $10. #### 10",
                       [("divide", "0.2"), ("multiply", "10")], "s1"),
    example_with_calls("Question: Nothing to compute here.\nAnswer: The answer is in the text. #### 3", [], "s2"),
    example_with_calls("Question: Betty has 100 dollars.\nAnswer: She has 100 - 50 = $50 left. #### 50",
                       [("subtract", "50")], "s3"),
]
