"""Data before any model sees it: examples with character spans of tool
calls (`examples.py`), tolerant readers that name file and line (`jsonl.py`),
few-shot prompt templates (`prompts.py`) and the mapping of spans to token
labels through a tokenizer's offsets (`encoding.py`). Where the datasets come
from (`manifest.py`), which folder each is read from (`locate.py`) and
`toolken-plus data download` (`download.py`)."""
