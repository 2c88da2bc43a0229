"""Toolken+ stage 2: re-score the stage-1 candidates against the tools'
documentation, with a Reject option."""
