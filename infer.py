"""Answer and score a task's questions with trained toolkens: the same command
as `toolken-plus infer` (toolken_plus/cli/infer.py says what it takes and writes).

    python infer.py checkpoint=<run dir of train.py> [overrides…]
    python infer.py --help
"""

from toolken_plus.cli.infer import main

if __name__ == "__main__":
    main(prog="infer.py")
