"""Config dataclasses saved beside every artifact: JSON round trip, unknown keys refused, resume comparison.

Fields carry their help text as ``transformers.HfArg`` metadata (:func:`setting`), so :mod:`core.cli` builds each command line
from the dataclass itself.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, TypeVar

from transformers.hf_argparser import HfArg

C = TypeVar("C", bound="ConfigBase")


def setting(
    *,
    help: str,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    **argparse_kwargs: Any,
) -> Any:
    """A config field with its help text and argparse options (``choices``, ``metavar``) for :mod:`core.cli`."""
    return HfArg(help=help, default=default, default_factory=default_factory, metadata=dict(argparse_kwargs))


@dataclasses.dataclass(kw_only=True)
class ConfigBase:
    """JSON-able settings: tuples are saved as lists and read back as tuples; unknown keys are an error."""

    # Settings that may change between a run and its --resume without changing the trained weights.
    RESUME_EXEMPT: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings {unknown}; expected some of {sorted(names)}")
        coerced = {}
        for name, value in values.items():
            tuple_typed = "tuple[" in str(hints[name])
            coerced[name] = tuple(value) if tuple_typed and isinstance(value, list) else value
        return cls(**coerced)

    def resume_differences(self, saved: ConfigBase) -> list[str]:
        """Settings that differ from a checkpoint's and would change the trained weights."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return [
            f"{name}: {theirs[name]!r} in the checkpoint != {mine[name]!r} now"
            for name in mine
            if name not in self.RESUME_EXEMPT and mine[name] != theirs[name]
        ]


@dataclasses.dataclass(kw_only=True)
class LoopConfig(ConfigBase):
    """The settings of :class:`core.loop.TrainingLoop`, shared by every trainer's config."""

    RESUME_EXEMPT: ClassVar[tuple[str, ...]] = (
        "resume",
        "output_dir",
        "log_every",
        "save_every",
        "keep_last",
        "tensorboard",
        "wandb_project",
        "device",
        "progress",
    )

    output_dir: str = setting(help="run folder: checkpoints/step_N, metrics.jsonl, loss_curve.png")
    resume: str | None = setting(
        default=None,
        help="'latest' or 'auto': the newest complete checkpoint in --output-dir, or a fresh start when there is "
        "none (what requeued and restarted jobs pass); or a checkpoints/step_N dir",
    )
    precision: str = setting(
        default="amp_bf16",
        help="autocast dtype on GPU: fp32, amp_bf16 or amp_fp16 (GradScaler); CPU always trains in fp32",
    )
    grad_clip: float | None = setting(default=None, help="clip the global gradient norm to this value")
    seed: int = setting(default=42, help="seed of the initialisation, the data order and dropout")
    save_every: int = setting(default=1000, help="checkpoint every N steps (and at the end)")
    keep_last: int = setting(default=3, help="checkpoints kept (0 = all)")
    log_every: int = setting(default=10, help="log metrics (and check that the loss is finite) every N steps")
    tensorboard: bool = setting(default=False, help="also log to OUTPUT/tensorboard (needs tensorboard)")
    wandb_project: str | None = setting(default=None, help="also log to this wandb project (needs wandb)")
    device: str = setting(default="auto", help="auto, cpu, cuda or cuda:N")
    progress: bool = setting(default=True, help="progress bar (--no-progress turns it off)")
