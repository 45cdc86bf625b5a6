"""The entry points' shared command line: --help with every default, flag checks, and one line on any exit.

Why: a bad flag or input file must end a run with one line naming the file, line and field (exit 2), never a stack
trace, and Ctrl-C must say which checkpoint a --resume continues from. The three scripts say it the same way.

Imports: adamame: checkpoint, data (DataError), dist, memory.
"""

import argparse
import os
import sys

from . import checkpoint, dist, memory
from .data import DataError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The entry points' --help: every flag's real default after its text; a flag without one explains itself."""
    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


def exit_with(message: str, code: int, every_rank: bool = False) -> None:
    """End an entry point with one line on stderr and exit status `code`. Under torchrun the ranks of a node read the
    same inputs and fail alike, so the node's first rank alone prints it (once per launcher, whose output is that
    node's; with one node, rank 0) and the others exit quietly with the same status. every_rank: an error that is
    each rank's own (a lost peer), printed by every rank that has it."""
    if every_rank or os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) == "0":
        print(message, file=sys.stderr)
    sys.exit(code)


def interrupted_training(out: str) -> None:
    """Ctrl-C in a trainer: one line (once per node) naming the checkpoint a --resume continues from; exit 130."""
    ck = os.path.join(out, "checkpoint.pt")
    exit_with(f"interrupted: the last checkpoint is {ck}; the same command with --resume continues from it exactly"
              if os.path.exists(ck) else f"interrupted before the first checkpoint of {out} (--save-every)", 130)


def check_flags(args, positive=(), non_negative=(), fractions=()) -> None:
    """The flag values argparse's types let through but the run cannot use: a DataError naming the flag. positive:
    > 0; non_negative: >= 0; fractions: {name: (low, high)} with low <= value <= high."""
    def bad(name, want):
        raise DataError(f"--{name.replace('_', '-')} must be {want}, got {getattr(args, name)}")

    for name in positive:
        if getattr(args, name) is not None and not getattr(args, name) > 0:  # `not >` also rejects NaN
            bad(name, "positive")
    for name in non_negative:
        if getattr(args, name) is not None and not getattr(args, name) >= 0:
            bad(name, "0 or more")
    for name, (low, high) in dict(fractions).items():
        v = getattr(args, name)
        if v is not None and not low <= v <= high:
            bad(name, f"in [{low}, {high}]")


def auto_or_positive(text):
    """An argparse type: 'auto' or a positive integer."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return int(text)


def run_trainer(main, out):
    """A trainer's entry point: exit with main()'s status, or one line and 3 (the memory plan does not fit), 2 (bad
    input, a lost rank, a non-finite loss) or 130 (Ctrl-C). out(): the run's --out, read only when needed."""
    try:
        sys.exit(main())
    except memory.PlanDoesNotFit as e:
        dist.cleanup(barrier=False)
        exit_with(str(e), 3)
    except dist.RankLost as e:  # this rank's own view of a lost peer (rank 0 may be the one lost)
        exit_with(f"error: {e}", 2, every_rank=True)
    except (DataError, FileNotFoundError, ValueError, checkpoint.TrainingStopped) as e:
        dist.cleanup(barrier=False)
        exit_with(f"error: {e}", 2)
    except KeyboardInterrupt:
        dist.cleanup(barrier=False)
        interrupted_training(out())
