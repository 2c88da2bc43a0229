"""Task adapters: turn benchmark data into :class:`~toolken_plus.tasks.base.Example` objects.

Each adapter reads one benchmark's files and produces plain texts in which every
tool call shows only as its result, with the character span of that result
(see DESIGN.md section 2).
"""
