"""Command lines generated from config dataclasses (transformers' ``HfArgumentParser``), with YAML recipes.

Every field of the dataclass becomes a flag named after it (``batch_size`` -> ``--batch-size``; the underscore
spelling works too), with the field's ``help`` / ``choices`` / ``metavar`` metadata (``transformers.HfArg``) as
its help text. ``bool`` fields are switches (``--tensorboard``; a field that defaults to True is turned off with
``--no-progress``). Beyond what ``HfArgumentParser`` handles, ``tuple[X, ...]`` fields take that many values
and ``dict[str, int]`` fields take ``NAME=N`` pairs.

``--config FILE.yaml`` reads a recipe: a mapping of field names (underscores or hyphens) to values. Flags on the
command line override it, and a field the recipe sets is no longer required on the command line. An unknown
key or a value of the wrong type is an error naming the key, before any work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from transformers import HfArgumentParser

T = TypeVar("T")
CONFIG_FLAG = "--config"


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; other types unchanged."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _pair(value_type: type):
    def parse(text: str) -> tuple[str, Any]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
        try:
            return name, value_type(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a {value_type.__name__}") from None

    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help; each flag shown once, in its hyphen spelling, switches without a value."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [o for o in action.option_strings if "_" not in o] or action.option_strings
        if not shown:
            return super()._format_action_invocation(action)
        if action.nargs == 0 or (action.nargs == "?" and action.const is True):
            return ", ".join(shown)
        return (
            ", ".join(shown) + " " + self._format_args(action, self._get_default_metavar_for_optional(action))
        )


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field: ``--batch-size`` for ``batch_size``."""
    return "--" + field_name.replace("_", "-")


class ConfigParser(HfArgumentParser):
    """An ``HfArgumentParser`` for one config dataclass, with ``--config FILE.yaml`` and tuple/dict fields."""

    def __init__(self, config_class: type[T], **kwargs: Any) -> None:
        self.config_class = config_class
        hints = typing.get_type_hints(config_class)
        self._hints = {f.name: hints[f.name] for f in dataclasses.fields(config_class)}
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(config_class, **kwargs)
        self.add_argument(
            CONFIG_FLAG,
            metavar="FILE.yaml",
            default=None,
            help="a recipe (YAML mapping of these settings); flags given here override it",
        )

    # ----- fields HfArgumentParser has no rule for --------------------------------------------------------
    def _parse_dataclass_field(self, parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        tp = _strip_optional(field.type)
        origin = typing.get_origin(tp)
        if origin not in (tuple, dict):
            HfArgumentParser._parse_dataclass_field(parser, field)
            return
        kwargs = dict(field.metadata)
        kwargs.pop("aliases", None)
        if origin is tuple:
            args = typing.get_args(tp)
            kwargs.update(type=args[0], nargs=len(args))
        else:
            kwargs.update(
                type=_pair(typing.get_args(tp)[1]), nargs="+", metavar=kwargs.get("metavar", "NAME=N")
            )
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        else:
            kwargs["required"] = True
        parser.add_argument(flag_name(field.name), dest=field.name, **kwargs)

    # ----- values -----------------------------------------------------------------------------------------
    def _coerce(self, name: str, value: Any) -> Any:
        """Command-line and YAML values to the field's type: lists to tuples, ``NAME=N`` pairs to dicts."""
        tp = _strip_optional(self._hints[name])
        origin = typing.get_origin(tp)
        if value is None:
            return None
        if origin is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if origin is dict and isinstance(value, list | tuple):
            return dict(value)
        return value

    def recipe_values(self, path: str | os.PathLike) -> dict[str, Any]:
        """The settings of a YAML recipe, checked against the config's fields (keys may use hyphens)."""
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"{CONFIG_FLAG} {path}: no such file")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{CONFIG_FLAG} {path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{CONFIG_FLAG} {path} must be a mapping of settings, got {type(loaded).__name__}"
            )
        values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        unknown = sorted(set(values) - set(self._hints))
        if unknown:
            raise ValueError(
                f"{CONFIG_FLAG} {path}: unknown settings {', '.join(unknown)}; "
                f"see `--help` for the {len(self._hints)} settings"
            )
        checked = {name: self._check_type(name, value, path) for name, value in values.items()}
        for field in dataclasses.fields(self.config_class):
            choices = field.metadata.get("choices")
            if field.name in checked and choices is not None and checked[field.name] not in (None, *choices):
                raise ValueError(
                    f"{path}: {field.name} must be one of {', '.join(map(str, choices))}, "
                    f"got {checked[field.name]!r}"
                )
        return checked

    def _check_type(self, name: str, value: Any, source: object) -> Any:
        tp = _strip_optional(self._hints[name])
        origin = typing.get_origin(tp) or tp
        if value is None:
            return None
        expected: tuple[type, ...] = {float: (int, float), bool: (bool,), int: (int,), str: (str,)}.get(
            origin, (list, tuple) if origin in (list, tuple) else (dict,) if origin is dict else (object,)
        )
        if origin is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if origin is int and isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"{source}: {name} must be {getattr(tp, '__name__', tp)}, got {value!r}")
        return float(value) if origin is float else self._coerce(name, value)

    def parse(self, argv: Sequence[str] | None = None) -> T:
        """The config the command line (and its ``--config`` recipe) describes."""
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument(CONFIG_FLAG, default=None)
        known, _ = pre.parse_known_args(argv)
        if known.config is not None:
            try:
                recipe = self.recipe_values(known.config)
            except ValueError as err:
                self.error(str(err))
            self.set_defaults(**recipe)
            for action in self._actions:
                if action.dest in recipe:
                    action.required = False
        namespace = self.parse_args(argv)
        values = {name: self._coerce(name, getattr(namespace, name)) for name in self._hints}
        return self.config_class(**values)


def run_training_cli(
    parser: ConfigParser,
    train: Callable[[T], dict[str, float]],
    argv: Sequence[str] | None,
    input_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """A trainer's ``main``: parse the config, train, leave the process group, print the last metrics on rank 0.

    Exit codes: 0 done; 1 training stopped (:class:`core.loop.TrainingError`, e.g. a non-finite loss);
    2 bad settings or inputs (``ValueError`` or one of ``input_errors``), reported before any work;
    75 (:data:`core.preemption.EXIT_PREEMPTED`) stopped by SIGTERM / SIGUSR1 after writing a checkpoint.
    """
    from core.distributed import leave_process_group
    from core.loop import TrainingError
    from core.preemption import Preempted

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger(parser.prog.removeprefix("python -m "))
    cfg = parser.parse(argv)
    try:
        metrics = train(cfg)
    except Preempted as err:
        log.warning("%s", err)
        return err.exit_code
    except TrainingError as err:
        log.error("%s", err)
        return 1
    except (ValueError, *input_errors) as err:
        log.error("%s", err)
        return 2
    finally:
        leave_process_group()
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        summary = " ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)
        )
        sys.stdout.write(summary + "\n")
    return 0


def parse_config(config_class: type[T], argv: Sequence[str] | None = None, **parser_kwargs: Any) -> T:
    """Shorthand for ``ConfigParser(config_class, **parser_kwargs).parse(argv)``."""
    return ConfigParser(config_class, **parser_kwargs).parse(argv)
