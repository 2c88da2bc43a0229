"""GSM8K-XL (ToolkenGPT): math word problems with enlarged numbers, four
calculator toolkens (add, subtract, multiply, divide).

Training data is GSM8K train, whose `<<48/2=24>>` annotations mark every
calculator use (tasks/gsm8k.py reads them); validation is a seeded held-out
slice of GSM8K train; evaluation is ToolkenGPT's `gsm8k-xl/test.json` (568
questions) under its prompts, scored with its exact-match rule
(tasks/answers.py).

False-positive calls. GSM8K-XL's reference solution lists its arithmetic
steps (`enhanced_process`, e.g. `4096-27-64 = 4005.0`); each step needs one
call per operator kind it uses. Per question, the calls of tool k beyond the
number of reference steps that need k are false positives (the multiset
difference agent calls − reference calls). So a question solved with one
extra `add` has one false-positive call, whatever the answer. Calls that
failed (bad arguments, errors) count too: the model asked for a tool.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from toolken_plus.data.locate import data_file, task_root
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.data.text_examples import TextExample
from toolken_plus.tasks import gsm8k
from toolken_plus.tasks.answers import extract_answer, is_correct
from toolken_plus.tasks.base import EvalItem, TaskData, TextTask, limit
from toolken_plus.tools.registry import Tool


def false_positive_calls(called: list[str], reference: list[str]) -> int:
    extra = Counter(called) - Counter(reference)
    return sum(extra.values())


def _number_text(value) -> str:
    """An argument as the demos write it: 12, 0.2 (a float that is whole loses its `.0`)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def stop_at_answer(text: str) -> int | None:
    """Where a complete answer ends: after `#### <number>` at a line break or
    space, or where the model starts a new `Question:`."""
    q = text.find("Question:")
    if q >= 0:
        return q
    mark = text.find("####")
    if mark < 0:
        return None
    tail = text[mark + 4 :]
    stripped = tail.lstrip(" $")
    num_end = len(tail) - len(stripped)
    j = 0
    while j < len(stripped) and (stripped[j].isdigit() or stripped[j] in ",.-"):
        j += 1
    if j == 0 or j == len(stripped):
        return None  # no number yet, or it may still be growing
    return mark + 4 + num_end + j


@dataclass
class Gsm8kXL(TextTask):
    name: str = "gsm8k_xl"
    train_file: str = "gsm8k/train.jsonl"
    n_val: int = 500  # validation questions held out of GSM8K train
    split_seed: int = 0
    test_file: str = "gsm8k-xl/test.json"
    prompt_file: str = "gsm8k-xl/template/llama_general.txt"
    icl_prompt_file: str = "gsm8k-xl/template/llama_func.txt"  # method=icl: demos that write their calls as text

    main_metric: ClassVar[str] = "accuracy"
    eval_conditions: ClassVar[str] = (
        "Every method answers the same test questions with greedy decoding in the agent loop, at most "
        "agent.max_new_tokens (200) reasoning tokens and agent.max_calls (10) calls per question, the same answer parsing and the same "
        "calculator tools and argument parser. Prompts: toolkens and no-tools use ToolkenGPT's reasoning demos "
        "(llama_general.txt); icl the tools' docs and its in-context demos (llama_func.txt); lora the instruction line "
        "and the question only, as it was trained.")
    eval_sets: ClassVar[tuple[str, ...]] = ("test",)
    datasets: ClassVar[tuple[str, ...]] = ("gsm8k-xl",)  # test set, prompts, tool docs; train_file is in gsm8k/

    # ------------------------------------------------------------ training
    def load(self, data) -> TaskData:
        train_file = data_file(data, self.train_file)
        root = task_root(data, self)
        stats = gsm8k.Gsm8kStats()
        examples = gsm8k.load_gsm8k(train_file, stats=stats)
        train, val = gsm8k.split_train_val(examples, self.n_val, self.split_seed)
        docs = {name: tool.doc for name, tool in self.build_tools(root).items()}
        return TaskData(
            tool_names=list(gsm8k.TOOLS),
            tool_docs={t: docs.get(t, "") for t in gsm8k.TOOLS},
            train=limit(train, data.limit_train),
            val=limit(val, data.limit_eval),
            notes=[stats.summary(),
                   f"split: {len(train)} train / {len(val)} validation (held out of GSM8K train, seed {self.split_seed})"],
        )

    def build_tools(self, root: Path) -> dict[str, Tool]:
        return gsm8k.calculator_tools(root)

    # ---------------------------------------------------------- evaluation
    def prompt(self, root: Path) -> FewShotPrompt:
        return FewShotPrompt.from_file(Path(root) / self.prompt_file)

    # ------------------------------------------------- text methods (icl, lora)
    def text_prompt(self, root: Path, method: str) -> FewShotPrompt:
        """icl: the tools' docs, then ToolkenGPT's in-context prompt (its demos
        write every call as `<multiply>(4, 3)=12`); lora: its instruction line
        and the question only: the format LoRA is trained on (text_examples)."""
        demos = FewShotPrompt.from_file(Path(root) / self.icl_prompt_file)
        instruction, _, rest = demos.prefix.partition("\n")
        if method == "lora":
            return FewShotPrompt(instruction + "\n\n", demos.question_format)
        docs = "".join(f"- {t.doc}\n" for t in self.build_tools(root).values())
        return FewShotPrompt(f"{instruction}. The operators:\n{docs}Write a call as <operator>(X, Y)= and its result "
                             f"follows.\n{rest}", demos.question_format)

    def text_examples(self, examples: list, root: Path) -> list[TextExample]:
        """Training texts for lora: the lora prompt, then the answer with each
        call written out before its result (`48/2 = <divide>(48, 2)=24`)."""
        prompt = self.text_prompt(root, "lora")
        out = []
        for ex in examples:
            answer = ex.text[ex.text.index("Answer:") + len("Answer:"):]
            offset = len(ex.text) - len(answer)
            pieces, pos = [], 0
            for call in ex.calls:
                start = call.start - offset
                pieces += [answer[pos:start], f"<{call.tool}>({', '.join(_number_text(a) for a in call.args)})="]
                pos = start
            pieces.append(answer[pos:])
            out.append(TextExample(ex.id, prompt.render(ex.meta["question"]), "".join(pieces)))
        return out

    def stop_at(self, text: str) -> int | None:
        return stop_at_answer(text)

    def parse_answer(self, text: str) -> float | None:
        return extract_answer(text)

    def eval_items(self, data) -> list[EvalItem]:
        path = data.eval_file or task_root(data, self) / self.test_file
        return [EvalItem(r["id"], r["question"], r["label"], {"reference_tools": r["reference_tools"]})
                for r in gsm8k.load_gsm8k_xl_test(path, limit=data.limit_eval)]

    def score(self, item: EvalItem, res) -> dict:
        row = self.generation_row(item, res)
        reference = item.meta.get("reference_tools", [])
        row.update({
            "correct": is_correct(res.answer, item.label),
            "reference_tools": reference,
            "false_positive_calls": false_positive_calls([c.tool for c in res.calls], reference),
        })
        return row

    def metrics(self, rows: list[dict]) -> dict:
        m = self.generation_metrics(rows)
        n, correct = len(rows), sum(r["correct"] for r in rows)
        fps = sum(r["false_positive_calls"] for r in rows)
        for r in rows:
            for t in r["reference_tools"]:
                m["per_tool"].setdefault(t, {"calls": 0, "errors": 0})
        for t, c in m["per_tool"].items():
            c["reference"] = sum(r["reference_tools"].count(t) for r in rows)
        m.update({
            "accuracy": correct / n if n else 0.0,
            "correct": correct,
            "false_positive_calls": fps,
            "false_positive_calls_per_question": fps / n if n else 0.0,
        })
        return m

    def report(self, metrics: dict, rows: list[dict], run_dir: Path, examples: int = 3) -> str:
        lines = [
            f"# GSM8K-XL evaluation (method={metrics.get('method', 'toolkens')}, setting={metrics.get('setting') or 'agent'})",
            "",
            f"- accuracy: **{metrics['accuracy']:.3f}** ({metrics['correct']}/{metrics['n']})",
            f"- tool calls: {metrics['tool_calls']} ({metrics['calls_per_question']:.2f} per question), "
            f"errors: {metrics['tool_errors']}, false-positive calls: {metrics['false_positive_calls']} "
            f"({metrics['false_positive_calls_per_question']:.2f} per question)",
            f"- logit bias: {metrics.get('logit_bias')}, batch size {metrics.get('batch_size')}, "
            f"time {metrics.get('seconds')} s ({metrics.get('questions_per_s', 0):.3f} questions/s)",
            f"- finish reasons: {metrics['finish_reasons']}",
            "",
            "| tool | calls | errors | reference steps |",
            "|---|---|---|---|",
        ]
        for tool, c in metrics["per_tool"].items():
            lines.append(f"| <{tool}> | {c['calls']} | {c['errors']} | {c['reference']} |")
        lines += ["", "## Examples", ""]
        for r in rows[:examples]:
            lines += [f"**Q:** {r['question']}", "", f"**A:** {r['trace'].strip()}", "",
                      f"answer {r['answer']} / label {r['label']} → {'correct' if r['correct'] else 'wrong'}", ""]
        return "\n".join(lines) + "\n"

    def headline(self, m: dict) -> str:
        return (f"accuracy {m['accuracy']:.3f} ({m['correct']}/{m['n']}), tool calls {m['tool_calls']}, "
                f"errors {m['tool_errors']}, false-positive calls {m['false_positive_calls']}")
