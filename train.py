"""Train toolkens on a frozen backbone: the same command as `toolken-plus train`
(toolken_plus/cli/train.py says what it takes and writes).

    python train.py experiment=<benchmark> [overrides…]
    python train.py --help
"""

from toolken_plus.cli.train import main

if __name__ == "__main__":
    main(prog="train.py")
