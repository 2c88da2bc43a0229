"""Character spans → token positions, for two unrelated tokenizers."""

import numpy as np
import pytest
from helpers import SAMPLES, TOOL_INDEX

from toolken_plus.data.encoding import IGNORE, VOCAB, encode_example
from toolken_plus.data.examples import Example


@pytest.mark.parametrize("tok_name", ["smol_tokenizer", "bert_tokenizer"])
def test_call_label_sits_before_first_result_token(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    for ex in SAMPLES:
        enc = encode_example(tok, ex, TOOL_INDEX)
        offsets = tok(ex.text, return_offsets_mapping=True)["offset_mapping"]
        tool_positions = np.flatnonzero(enc.tool_label >= 0)
        assert len(tool_positions) == len(ex.calls)
        for p, call in zip(tool_positions, ex.calls):
            assert enc.tool_label[p] == TOOL_INDEX[call.tool]
            s, e = offsets[p + 1]  # the token this position predicts
            # it is the first token of the result span (it holds its first char)
            assert s <= call.start < e
            assert enc.next_token[p] == enc.input_ids[p + 1]
        assert enc.tool_label[-1] == IGNORE
        assert enc.n_calls_lost == 0


def test_rest_of_result_span_is_ignored(smol_tokenizer):
    # SmolLM2 splits numbers into digits: "72" is two tokens, so the position
    # predicting "2" after "7" has no loss, and the one after the span does.
    ex = SAMPLES[0]
    enc = encode_example(smol_tokenizer, ex, TOOL_INDEX)
    offsets = smol_tokenizer(ex.text, return_offsets_mapping=True)["offset_mapping"]
    call = ex.calls[1]
    j = next(i for i, (s, e) in enumerate(offsets) if s <= call.start < e)
    assert enc.tool_label[j - 1] == TOOL_INDEX["add"]
    assert enc.tool_label[j] == IGNORE  # predicts "2" of "72"
    assert enc.tool_label[j + 1] == VOCAB  # predicts the token after "72"


def test_two_tokenizers_differ_but_agree_on_calls(smol_tokenizer, bert_tokenizer):
    ex = SAMPLES[1]
    a = encode_example(smol_tokenizer, ex, TOOL_INDEX)
    b = encode_example(bert_tokenizer, ex, TOOL_INDEX)
    assert len(a) != len(b)
    assert sorted(a.tool_label[a.tool_label >= 0]) == sorted(b.tool_label[b.tool_label >= 0])


def test_ignore_spans_get_no_label(smol_tokenizer):
    text = "Answer: 100 - 50 - 30 = 20 left"
    start = text.index("20")
    ex = Example("x", text, [], ignore_spans=[(start, start + 2)])
    enc = encode_example(smol_tokenizer, ex, TOOL_INDEX)
    assert (enc.tool_label >= 0).sum() == 0
    offsets = smol_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    j = next(i for i, (s, e) in enumerate(offsets) if s <= start < e)
    assert enc.tool_label[j - 1] == IGNORE


def test_unknown_tool_is_a_clear_error(smol_tokenizer):
    ex = SAMPLES[0]
    with pytest.raises(KeyError, match="unknown tool 'add'"):
        encode_example(smol_tokenizer, ex, {"divide": 0})


def test_truncation_counts_lost_calls(smol_tokenizer):
    enc = encode_example(smol_tokenizer, SAMPLES[0], TOOL_INDEX, max_length=8)
    assert enc.n_calls_lost == 2 and len(enc) == 8
