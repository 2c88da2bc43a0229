"""Built-in tool packs of toolken_plus, importable as `toolken_plus_tools`.

calculator  the 4 GSM8K-XL tools with ToolkenGPT's result formatting
"""
