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


def tiny_backbone_of(architecture: str, tokenizer, sliding_window: int = 12):
    """A tiny random backbone of another cache layout than Llama's full one:
    "gemma3" (hybrid: sliding-window layers of `sliding_window` positions
    around a full-attention one, grouped-query attention), "qwen2"
    (grouped-query attention: 4 heads on 2 key/value heads), "llama"."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    from toolken_plus.backbone import tiny_random_backbone
    from toolken_plus.backbone.model import Backbone, freeze

    if architecture == "llama":
        return tiny_random_backbone(tokenizer, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, max_position_embeddings=2048)
    if architecture == "gemma3":
        config = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=sliding_window,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"], **ids)
        cls = Gemma3ForCausalLM
    elif architecture == "qwen2":
        config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, **ids)
        cls = Qwen2ForCausalLM
    else:
        raise ValueError(architecture)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(config).float()
    return Backbone(freeze(model), tokenizer, f"tiny-random-{architecture}", "seed0")
