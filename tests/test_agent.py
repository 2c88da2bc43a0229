"""The agent loop on a tiny random backbone: batching, tool mode, failures."""

import pytest
import torch

from toolken_plus.adapter.head import ToolkenHead
from toolken_plus.backbone import cache_layers
from toolken_plus.data.prompts import FewShotPrompt
from toolken_plus.infer.agent import Agent, AgentConfig
from toolken_plus.tasks.gsm8k import calculator_tools
from toolken_plus.tasks.gsm8k_xl import Gsm8kXL, stop_at_answer
from toolken_plus.tools.calls import closing_paren as _closing_paren

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many?", "A car drives 60 miles per hour for 2 hours.",
             "Sam had 10 cookies and ate 3.", "What is 5 times 6?", "Zoe splits 12 pens among 4 kids."]


@pytest.fixture(scope="module")
def tools(data_root):
    return calculator_tools(data_root)


@pytest.fixture(scope="module")
def prompt(data_root):
    return FewShotPrompt.from_file(data_root / "gsm8k-xl" / "template" / "llama_general.txt")


def _agent(backbone, tools, prompt, **cfg):
    head = ToolkenHead(list(tools), backbone.hidden_size, seed=0)
    return Agent(backbone, head, tools, prompt, AgentConfig(progress=False, **{"max_new_tokens": 20, **cfg}), task=Gsm8kXL())


@pytest.mark.parametrize("bias", [float("-inf"), 4.0])
def test_batched_decoding_equals_one_by_one(tiny_backbone, tools, prompt, bias):
    agent = _agent(tiny_backbone, tools, prompt, logit_bias=bias, batch_size=3, max_arg_tokens=6)
    batched = agent.run_batch(QUESTIONS)
    single = [agent.run(q) for q in QUESTIONS]
    assert [r.trace for r in batched] == [r.trace for r in single]
    assert [len(r.calls) for r in batched] == [len(r.calls) for r in single]
    if bias > 0:
        assert sum(len(r.calls) for r in batched) > 0


@pytest.mark.parametrize("batch_size", [1, 3])
def test_questions_arriving_during_a_run_join_it(tiny_backbone, tools, prompt, batch_size, monkeypatch):
    """A server's queue (`more`): questions that arrive while a run decodes
    take free rows (the batch grows back for them) and decode what they
    decode alone; the run ends once `more` has nothing left."""
    from toolken_plus.infer.batch_cache import BatchCache as _BatchCache

    agent = _agent(tiny_backbone, tools, prompt, logit_bias=4.0, max_arg_tokens=6)
    single = [agent.run(q) for q in QUESTIONS]
    arrivals = [[], [QUESTIONS[1]], [], [], [QUESTIONS[2], QUESTIONS[3]], *[[]] * 30, [QUESTIONS[4]]]
    asked, finished = [], []

    def more():
        asked.append(1)
        return arrivals.pop(0) if arrivals else []

    widths, step = [], _BatchCache.step
    monkeypatch.setattr(_BatchCache, "step", lambda self, tokens: widths.append(self.batch) or step(self, tokens))
    results = agent.run_batch([QUESTIONS[0]], batch_size=batch_size, more=more, on_result=lambda i, r: finished.append(i))
    assert [r.trace for r in results] == [r.trace for r in single]
    assert sorted(finished) == list(range(5)) and not arrivals and len(asked) > 35
    assert widths[0] == 1 and max(widths) == batch_size  # one row at first; grown for the arrivals


def test_sharing_the_prompt_prefix_changes_no_trace(tiny_backbone, tools, prompt, monkeypatch):
    """Rows reading the few-shot prefix's KV in place decode what rows holding
    their own copy of it decode."""
    from toolken_plus.kv.shared_prefix import _SUPPORTED, supports_shared_prefix

    agent = _agent(tiny_backbone, tools, prompt, logit_bias=4.0, batch_size=3, max_arg_tokens=6)
    assert supports_shared_prefix(tiny_backbone)
    shared = agent.run_batch(QUESTIONS)
    monkeypatch.setitem(_SUPPORTED, tiny_backbone.model, False)
    copied = agent.run_batch(QUESTIONS)
    assert [r.trace for r in shared] == [r.trace for r in copied]
    assert sum(len(r.calls) for r in shared) > 0


def test_no_tools_setting_never_calls(tiny_backbone, tools, prompt):
    agent = _agent(tiny_backbone, tools, prompt, setting="no_tools", logit_bias=100.0, batch_size=2)
    assert all(not r.calls for r in agent.run_batch(QUESTIONS[:3]))


def test_agent_matches_plain_greedy_decoding_when_tools_are_off(tiny_backbone, tools, prompt):
    """With toolkens disabled the loop is plain greedy decoding of the prompt."""
    agent = _agent(tiny_backbone, tools, prompt, setting="no_tools", max_new_tokens=12)
    res = agent.run(QUESTIONS[0])
    text = prompt.render(QUESTIONS[0])
    ids = torch.tensor([tiny_backbone.tokenizer(prompt.prefix, add_special_tokens=False)["input_ids"]
                        + tiny_backbone.tokenizer(prompt.question_part(QUESTIONS[0]), add_special_tokens=False)["input_ids"]])
    out = tiny_backbone.model.generate(ids, max_new_tokens=res.new_tokens, do_sample=False,
                                       attention_mask=torch.ones_like(ids), pad_token_id=tiny_backbone.tokenizer.pad_token_id)
    assert text.endswith("Answer:")
    assert tiny_backbone.tokenizer.decode(out[0, ids.shape[1]:]).startswith(res.generation)


@pytest.fixture(scope="module", params=["llama", "gemma3", "qwen2"])
def any_backbone(request, smol_tokenizer):
    """Tiny random backbones of each cache layout: full attention (Llama),
    hybrid sliding-window + full layers with a window far shorter than the
    prompt (Gemma 3), grouped-query attention (Qwen2)."""
    from helpers import tiny_backbone_of

    return tiny_backbone_of(request.param, smol_tokenizer)


def test_agent_matches_generate_on_every_cache_layout(any_backbone, tools, prompt):
    """Batched rows (left-padded, prefilled by prefill_rows, decoded by
    BatchCache) decode what `model.generate` decodes from each prompt alone,
    whatever the cache layout."""
    backbone, tok = any_backbone, any_backbone.tokenizer
    agent = _agent(backbone, tools, prompt, setting="no_tools", max_new_tokens=10, batch_size=3)
    questions = QUESTIONS[:4]
    results = agent.run_batch(questions)
    for q, res in zip(questions, results):
        ids = torch.tensor([agent.policy.encode_start(prompt.prefix) + agent.policy.encode(prompt.question_part(q))])
        if backbone.sliding_window is not None:
            assert ids.shape[1] > 4 * backbone.sliding_window  # the window really slides
        out = backbone.model.generate(ids, max_new_tokens=res.new_tokens, do_sample=False,
                                      attention_mask=torch.ones_like(ids), pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, ids.shape[1]:]).startswith(res.generation)


def test_batched_tool_calls_equal_one_by_one_on_every_cache_layout(any_backbone, tools, prompt):
    """Tool mode too: context switches rewrite rows and prefill_rows stitches
    cached rows to new text with gaps between them."""
    agent = _agent(any_backbone, tools, prompt, logit_bias=4.0, batch_size=3, max_arg_tokens=6, max_new_tokens=12)
    batched = agent.run_batch(QUESTIONS[:4])
    single = [agent.run(q) for q in QUESTIONS[:4]]
    assert [r.trace for r in batched] == [r.trace for r in single]


@pytest.fixture(scope="module")
def bos_tokenizer(smol_tokenizer):
    """SmolLM2's tokenizer made to add a BOS before every text, as Llama's,
    Gemma's and Qwen's tokenizers do (SmolLM2's adds none)."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(smol_tokenizer)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                              special_tokens=[(bos, tok.bos_token_id)])
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    return tok


def test_inference_reads_the_bos_training_reads(tiny_backbone, bos_tokenizer, smol_tokenizer, tools, prompt):
    """A tokenizer that adds a BOS: training's encoded examples and the
    agent's contexts both begin with it (and the agent decodes what
    `generate` does from BOS + prompt); SmolLM2's adds none, anywhere."""
    from toolken_plus.backbone.model import Backbone
    from toolken_plus.data.encoding import context_start_ids, encode_example, leading_special_ids
    from toolken_plus.data.examples import Example

    text = prompt.prefix + prompt.question_part(QUESTIONS[0])
    trained = encode_example(bos_tokenizer, Example("ex", text, []), {}, max_length=4096).input_ids.tolist()
    assert leading_special_ids(bos_tokenizer) == [bos_tokenizer.bos_token_id] == trained[:1]
    assert leading_special_ids(smol_tokenizer) == []
    assert context_start_ids(smol_tokenizer, text) == encode_example(smol_tokenizer, Example("ex", text, []), {}, 4096).input_ids.tolist()

    backbone = Backbone(tiny_backbone.model, bos_tokenizer, tiny_backbone.name, tiny_backbone.revision)
    agent = _agent(backbone, tools, prompt, setting="no_tools", max_new_tokens=8)
    start = agent.policy.encode_start(prompt.prefix) + agent.policy.encode(prompt.question_part(QUESTIONS[0]))
    k = len(agent.policy.encode_start(prompt.prefix)) - 1  # (the token at the prefix/question seam may merge)
    assert start[:k] == trained[:k] and k > 100  # the same ids, BOS included, as training reads this text
    res = agent.run(QUESTIONS[0])
    assert agent.scheduler.prefix("reason", prompt.prefix).n == len(agent.policy.encode_start(prompt.prefix))
    ids = torch.tensor([start])
    out = backbone.model.generate(ids, max_new_tokens=res.new_tokens, do_sample=False,
                                  attention_mask=torch.ones_like(ids), pad_token_id=bos_tokenizer.pad_token_id)
    assert bos_tokenizer.decode(out[0, ids.shape[1]:]).startswith(res.generation)


def test_failed_calls_are_recorded_and_the_run_goes_on(tiny_backbone, tools, prompt):
    agent = _agent(tiny_backbone, tools, prompt, logit_bias=50.0, batch_size=2, max_arg_tokens=4, max_calls=3)
    results = agent.run_batch(QUESTIONS[:2])
    for r in results:
        assert len(r.calls) == 3  # the cap on calls per question
        assert all(c.error for c in r.calls)  # a random model writes no valid arguments
        assert r.finish_reason in {"length", "eos", "answer"}




def test_a_successful_call_writes_its_result_into_the_text(tiny_backbone, tools, prompt, monkeypatch):
    agent = _agent(tiny_backbone, tools, prompt, logit_bias=-1e9, batch_size=1, max_new_tokens=6)
    script = tiny_backbone.tokenizer("3, 4)", add_special_tokens=False)["input_ids"]
    state = {"calls": 0}

    def choose_tool(row, vocab, scores):  # trigger <add> once, at the third reasoning token
        if row.mode == "reason" and row.new_tokens == 2 and not row.calls and state["calls"] == 0:
            state["calls"] += 1
            return tools["add"]
        return None

    def tool_mode_token(row, vocab):  # the "model" types the arguments
        return script[len(row.arg_ids)]

    monkeypatch.setattr(agent.policy, "choose_tool", choose_tool)
    monkeypatch.setattr(agent.policy, "tool_mode_token", tool_mode_token)
    res = agent.run(QUESTIONS[0])
    (call,) = res.calls
    assert (call.tool, call.args, call.result, call.error) == ("add", [3, 4], "7", None)
    assert res.generation[call.at_char:].startswith("7")
    assert "<add>(3, 4)=7" in res.trace and "<add>" not in res.generation


@pytest.mark.parametrize("batch_size", [1, 2])
def test_short_results_ride_along_in_decode_steps_when_batched(tiny_backbone, tools, prompt, monkeypatch, batch_size):
    """At batch > 1 a short result is fed through the decode steps, not
    prefilled; the text is the same as at batch 1, where it is prefilled."""
    tok = tiny_backbone.tokenizer
    script = tok("3, 4)", add_special_tokens=False)["input_ids"]
    result_ids = tok("7", add_special_tokens=False)["input_ids"]

    def run(bs):
        agent = _agent(tiny_backbone, tools, prompt, logit_bias=-1e9, batch_size=bs, max_new_tokens=8)
        monkeypatch.setattr(agent.policy, "choose_tool", lambda row, vocab, scores: tools["add"]
                            if row.mode == "reason" and row.new_tokens == 2 and not row.calls else None)
        monkeypatch.setattr(agent.policy, "tool_mode_token", lambda row, vocab: script[len(row.arg_ids)])
        prefilled = []
        real = agent.scheduler.prefill_many
        monkeypatch.setattr(agent.scheduler, "prefill_many", lambda jobs: prefilled.extend(j[2] for j in jobs) or real(jobs))
        return agent.run_batch(QUESTIONS[:2]), prefilled

    results, prefilled = run(batch_size)
    reference, _ = run(1)
    assert [r.trace for r in results] == [r.trace for r in reference]
    assert all("<add>(3, 4)=7" in r.trace for r in results)
    assert (result_ids in prefilled) == (batch_size == 1)


def test_calling_a_tool_again_extends_its_kept_tool_mode_context(tiny_backbone, tools, prompt, monkeypatch):
    """The second <add> call prefills only the text since the first call's `)`;
    its state equals a fresh forward over the whole tool-mode context."""
    agent = _agent(tiny_backbone, tools, prompt, logit_bias=-1e9, batch_size=1, max_new_tokens=9)
    tok = tiny_backbone.tokenizer
    script = tok("3, 4)", add_special_tokens=False)["input_ids"]

    def choose_tool(row, vocab, scores):  # <add> at the 3rd and the 6th reasoning token
        if row.mode == "reason" and row.new_tokens in (2, 5) and len(row.calls) == (row.new_tokens == 5):
            return tools["add"]
        return None

    monkeypatch.setattr(agent.policy, "choose_tool", choose_tool)
    monkeypatch.setattr(agent.policy, "tool_mode_token", lambda row, vocab: script[len(row.arg_ids)])
    prefills = []
    real = agent.scheduler.prefill_many
    monkeypatch.setattr(agent.scheduler, "prefill_many", lambda jobs: prefills.append((jobs, real(jobs))) or prefills[-1][1])
    res = agent.run(QUESTIONS[0])
    assert [c.result for c in res.calls] == ["7", "7"]

    demo_ids = tok(tools["add"].demo_prompt.prefix, add_special_tokens=False)["input_ids"]
    enters = [(job, out) for jobs, outs in prefills for job, out in zip(jobs, outs)
              if tok.decode(job[2]).endswith("<add>(")]
    (first, _), (second, second_out) = enters
    assert first[3].n == len(demo_ids) and first[1] == 0  # the first call starts from the (shared) demos alone
    assert second[3] is first[3]
    assert second[1] == len(first[2]) + len(script)  # the second extends the first
    assert tok.decode(second[2]).startswith("=7")  # ... by the text after its `)`
    full = torch.tensor([demo_ids + first[2] + script + second[2]])
    hidden, _ = tiny_backbone.final_hidden(full)
    torch.testing.assert_close(second_out[2], hidden[0, -1], atol=1e-4, rtol=1e-4)


def test_helpers():
    assert _closing_paren("3, 4) and") == 4
    assert _closing_paren("[1, (2)], 'a)b')") == 15
    assert _closing_paren("3, 4") is None
    assert stop_at_answer(" so 3 + 4 = 7. #### 7\n") == len(" so 3 + 4 = 7. #### 7")
    assert stop_at_answer(" #### 7") is None  # the number may still grow
    assert stop_at_answer(" done. Question: next") == len(" done. ")


def test_toolkens_need_implementations(tiny_backbone, prompt):
    head = ToolkenHead(["add", "teleport"], tiny_backbone.hidden_size)
    with pytest.raises(ValueError, match="teleport"):
        Agent(tiny_backbone, head, {}, prompt)


def test_batched_prefill_equals_separate_prefills(tiny_backbone, tools, prompt):
    agent = _agent(tiny_backbone, tools, prompt)
    tok = tiny_backbone.tokenizer
    base_ids = [tok("Question: one two three", add_special_tokens=False)["input_ids"],
                tok("Q: a much longer base context with more tokens in it", add_special_tokens=False)["input_ids"]]
    new_ids = [tok(" and 3 + 4", add_special_tokens=False)["input_ids"], tok(" =", add_special_tokens=False)["input_ids"]]
    jobs = []
    for b, _ in zip(base_ids, new_ids):
        _, cache = tiny_backbone.final_hidden(torch.tensor([b]), use_cache=True)
        jobs.append(([(k.clone(), v.clone()) for k, v in cache_layers(cache)], len(b)))
    together = agent.scheduler.prefill_many([(l, n, new) for (l, n), new in zip(jobs, new_ids)])
    for i, ((l, n), new, (out_layers, out_n, out_h)) in enumerate(zip(jobs, new_ids, together)):
        (alone_layers, alone_n, alone_h), = agent.scheduler.prefill_many([(l, n, new)])
        full, _ = tiny_backbone.final_hidden(torch.tensor([base_ids[i] + new]))
        assert out_n == alone_n == n + len(new)
        assert torch.allclose(out_h, alone_h, atol=1e-5) and torch.allclose(out_h, full[0, -1], atol=1e-5)
        assert torch.allclose(out_layers[0][0], alone_layers[0][0], atol=1e-5)


def test_prefill_groups_jobs_of_similar_length(tiny_backbone, monkeypatch):
    import toolken_plus.kv.rows as kv

    layers, n = kv.prefix_row(tiny_backbone, tiny_backbone.tokenizer("Question: some words", add_special_tokens=False)["input_ids"])
    lengths = [3, 40, 2, 45, 4]
    jobs = [(layers, n, [7 + i] * length) for i, length in enumerate(lengths)]
    real, groups = kv.prefill_rows, []
    monkeypatch.setattr(kv, "prefill_rows", lambda bb, js, **kw: groups.append(sorted(len(j[2]) for j in js)) or real(bb, js, **kw))
    out = kv.prefill_by_length(tiny_backbone, jobs)
    assert sorted(groups) == [[2, 3, 4], [40, 45]]  # no 3-token job padded to 45
    assert [m for _, m, _ in out] == [n + length for length in lengths]  # in the jobs' order
    for job, (_, _, hidden) in zip(jobs, out):
        torch.testing.assert_close(hidden, real(tiny_backbone, [job])[0][2], atol=1e-5, rtol=1e-5)


def test_batch_cache_width_stays_bounded(tiny_backbone):
    from toolken_plus.infer.batch_cache import BatchCache as _BatchCache

    tok = tiny_backbone.tokenizer
    ids = tok("Question: a few words here to make a context", add_special_tokens=False)["input_ids"]
    _, cache = tiny_backbone.final_hidden(torch.tensor([ids]), use_cache=True)
    layers = cache_layers(cache)
    batch = _BatchCache(tiny_backbone, 2)
    batch.set_row(0, layers, len(ids))
    batch.set_row(1, layers, len(ids))
    for step in range(200):
        batch.step(torch.tensor([5, 6]))
        if step % 20 == 0:  # rows keep switching to short fresh contexts
            batch.set_row(step // 20 % 2, layers, len(ids))
        batch.trim(slack=16)
    assert batch.width <= int(batch.lengths.max()) + 16
    assert batch.mask.sum(1).tolist() == batch.lengths.tolist()


def _llm_reranker(backbone, head, tools, reject: bool):
    """An LLMReranker whose Reject row is set, per decision, to ±g·1e4: Reject
    then always wins (reject=True) or always loses, whatever g is."""
    from toolken_plus.rerank.llm import LLMReranker, init_rerank_weight

    class Scripted(LLMReranker):
        def rankings(self, g, cands, contexts):
            assert len(g) == 1, "scripted for batch 1"
            self.weight[-1] = (1.0 if reject else -1.0) * 1e4 * g[0] / g[0].norm()
            return super().rankings(g, cands, contexts)

    return Scripted(backbone, init_rerank_weight(head.weight), head.tool_names, {n: t.doc for n, t in tools.items()}, k=2)


def test_reranker_reject_gives_the_no_tool_text_and_is_recorded(tiny_backbone, tools, prompt):
    base = _agent(tiny_backbone, tools, prompt, logit_bias=4.0, batch_size=1)
    plain = _agent(tiny_backbone, tools, prompt, logit_bias=float("-inf"), batch_size=1)
    rejecting = Agent(tiny_backbone, base.head, tools, prompt, base.cfg, task=Gsm8kXL(),
                      reranker=_llm_reranker(tiny_backbone, base.head, tools, True))
    q = QUESTIONS[0]
    assert len(base.run(q).calls) > 0  # stage 1 alone calls tools here
    res = rejecting.run(q)
    assert res.calls == [] and res.reranks and all(r["chosen"] is None for r in res.reranks)
    assert res.generation == plain.run(q).generation  # Reject ⇒ the vocabulary token, every time
    accepting = Agent(tiny_backbone, base.head, tools, prompt, base.cfg, task=Gsm8kXL(),
                      reranker=_llm_reranker(tiny_backbone, base.head, tools, False))
    res = accepting.run(q)
    assert res.calls and res.reranks[0]["chosen"] in res.reranks[0]["candidates"]
    assert res.reranks[0]["chosen"] == res.calls[0].tool
