"""Running a `@hydra.main` function on a command line given as a list.

Hydra reads its overrides from `sys.argv` and takes no argument for them, so a
`toolken-plus` subcommand puts its own arguments there for the call. That way
`toolken-plus train a=b` and `python train.py a=b` are one Hydra application:
the same overrides, `--help`, `-m` sweeps, `--cfg job`.
"""

from __future__ import annotations

import sys
from typing import Callable


def run_hydra_main(hydra_main: Callable[[], object], prog: str, argv: list[str] | None) -> int:
    """Run `hydra_main` as if `prog argv…` had been typed (argv None: this
    process's own arguments). Hydra exits non-zero itself on a bad override or
    a failed run; returning means the run succeeded."""
    saved = sys.argv
    # argv[0] is what Hydra's argparse prints in `usage: …`
    sys.argv = [prog, *(saved[1:] if argv is None else argv)]
    try:
        hydra_main()
    finally:
        sys.argv = saved
    return 0
