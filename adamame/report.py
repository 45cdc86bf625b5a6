"""Training metrics to TensorBoard or Weights & Biases, beside metrics.jsonl (`--report-to`).

Why: researchers watch runs in the tools they already use, not in a JSON Lines file. Every scalar of a metrics.jsonl
row goes to the tool at the row's step, nested ones flattened with "/" (`lang_match_by_lang/fr`); lists (the
per-update losses) and text stay in the file. Only rank 0 reports. Both tools are optional packages: asking for a
missing one is a clear error before any work.

Imports: tensorboard (torch.utils.tensorboard) or wandb, only when asked for.
"""

import os

REPORTERS = ("none", "tensorboard", "wandb")


def flatten(row: dict, prefix: str = "") -> dict:
    """{"a": 1, "b": {"c": 2}, "d": [1, 2]} -> {"a": 1.0, "b/c": 2.0}: numbers only (bools as 0/1)."""
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (bool, int, float)) and not (isinstance(value, float) and value != value):
            out[name] = float(value)
    return out


def require_reporter(kind: str) -> None:
    """The clear error for an unknown tool or a missing package, before any work (the trainers call it first)."""
    if kind not in REPORTERS:
        raise ValueError(f"--report-to {kind!r}: choose from {', '.join(REPORTERS)}")
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package:
        try:
            __import__(package)
        except ImportError:
            raise ValueError(f"--report-to {kind} needs the {package} package, which is not installed "
                             f"(pip install {package})") from None


class Reporter:
    """`log(row)` sends a metrics row to the chosen tool; `close()` at the end. A no-op for "none" and on ranks > 0."""

    def __init__(self, kind: str, out_dir: str, config: dict, rank: int = 0):
        if kind not in REPORTERS:
            raise ValueError(f"--report-to {kind!r}: choose from {', '.join(REPORTERS)}")
        self.kind, self.writer = (kind if rank == 0 else "none"), None
        if self.kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional (tensorboard): only when asked for
            except ImportError:
                raise ValueError("--report-to tensorboard needs the tensorboard package, which is not installed "
                                 "(pip install tensorboard)") from None
            self.writer = SummaryWriter(log_dir=os.path.join(out_dir, "tensorboard"))
        elif self.kind == "wandb":
            try:
                import wandb  # optional (pip install wandb): only when asked for
            except ImportError:
                raise ValueError("--report-to wandb needs the wandb package, which is not installed "
                                 "(pip install wandb)") from None
            self.writer = wandb.init(project=os.environ.get("WANDB_PROJECT", "adamame"), dir=out_dir,
                                     name=os.path.basename(os.path.abspath(out_dir)), config=config, resume="allow")

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        step = int(row["step"])
        scalars = {k: v for k, v in flatten(row).items() if k != "step"}
        if self.kind == "tensorboard":
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        else:
            self.writer.log(scalars, step=step)

    def close(self) -> None:
        if self.writer is not None:
            (self.writer.close if self.kind == "tensorboard" else self.writer.finish)()
            self.writer = None
