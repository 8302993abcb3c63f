"""Name -> component registries, so configs can name models, losses, schedules, ensemble methods... and the index
of every one of them (``INDEX``): what it holds, where it lives, which config key picks from it and how to add an
entry. The README's "Extending segkit" table is made from the index and a test keeps every ``Registry`` in it.

A component added from outside segkit is registered by a module the config lists under ``imports:`` (imported when
the config loads, before any name is checked); the README's recipes show one of each kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Optional, TypeVar

from segkit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders. ``@REG.register("name")`` adds one; ``REG.get("name")`` fetches it.

    ``fill``: a function that registers the entries on first use, for tables read from a library that is slow to
    import (smp's architectures), so that importing the module holding the registry stays cheap."""

    def __init__(self, kind: str, fill: Optional[Callable[["Registry[T]"], None]] = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._fill = fill

    @property
    def items(self) -> dict[str, T]:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)
        return self._items

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def add(obj: T) -> T:
            key = (name or getattr(obj, "__name__")).lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str, key: str | None = None) -> T:
        """Fetch by name; ``key`` is the config key that named it, for the error message."""
        try:
            return self.items[name.lower()]
        except KeyError:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}; known: {', '.join(sorted(self.items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self.items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class ExtensionPoint:
    """One registry as the index lists it."""

    what: str  # what an entry is
    where: str  # "module:attribute" of the registry (or of the function that adds one)
    key: str  # the config key (or option) that picks entries
    add: str  # how to add one


# One extension point a paragraph: "what an entry is | where the registry lives | what picks entries", then, indented,
# how to add one.
_POINTS = """
loss | segkit.losses:LOSSES | train.loss
    `@LOSSES.register(name)` on `build(mode, num_classes, class_weights=None, **params)` returning a module
    `(logits, Target) -> loss`
architecture (decoder) | segkit.models:ARCHS | models[].arch
    every smp decoder and MONAI's 3D networks are there; `ARCHS.register(name)(Arch(name, cls))` for another, a 3D
    one `Arch(name, None, dims=3, build=fn, stride=fn)` (segkit.models.volumetric)
encoder | timm.models:register_model | models[].encoder
    a timm model registered with `@register_model` is `tu-<name>`; smp's own encoders by name
optimizer | segkit.optim:OPTIMIZERS | train.optimizer
    `@OPTIMIZERS.register(name)` on `build(param_groups, train_cfg)`
learning-rate schedule | segkit.optim:SCHEDULES | train.schedule.name
    `@SCHEDULES.register(name)` on `(step, total, schedule_cfg, floor) -> lr factor`
augmentation | segkit.data.augment:AUGMENTS | train.augment
    `@AUGMENTS.register(name)` on a function returning albumentations transforms
3D augmentation | segkit.data.augment3d:AUGMENTS_3D | train.augment (of a 3D model)
    `@AUGMENTS_3D.register(name)` on `(patch, slice plane) -> MONAI dictionary transforms` of "image" and "label"
mask source | segkit.data.sources.base:SOURCES | data.mask_source (data.mask_options)
    a `MaskSource` subclass with `@SOURCES.register(name)`
test-time augmentation | segkit.inference.tta:TTA | predict.tta
    `@TTA.register(name)` on a function returning the views
runtime | segkit.inference.runtimes:RUNTIMES | package --models, infer.py --runtime
    built in (eager, torchscript, onnx): a bundle carries segkit alone, so a new runtime is a loader
    `(path, device) -> (network, meta)` registered in segkit itself with `@RUNTIMES.register(name)`
ensemble method | segkit.ensemble.base:METHODS | ensemble.methods, ensemble.choose
    a `Method` subclass (its facts: `subsettable`, `state`/`load_state`/`restrict`) with
    `@METHODS.register(name)`
post-processing step | segkit.postprocess.masks:MASK_STEPS | tune.morph_steps
    `@register_step(name)` on `(mask, radius) -> mask`
instance decoder | segkit.postprocess.instances:DECODERS | chosen by tune (tune.instances)
    `@DECODERS.register(name)` on `(probs, DecodeParams) -> labels`
competition metric | segkit.metrics.competition:COMPETITION_METRICS | metric
    `COMPETITION_METRICS.register(name)(CompetitionMetric(...))`
stage | segkit.commands:register_stage | segkit run, segkit <name>
    `register_stage(Stage(...), after=...)`, with `register_artifact` for what it writes
command | segkit.commands:register | segkit <name>
    `register(Command(...))`
"""


def _parse(text: str) -> tuple[ExtensionPoint, ...]:
    rows: list[list[str]] = []
    for line in text.strip().splitlines():
        if line.startswith(" "):
            rows[-1][3] = f"{rows[-1][3]} {line.strip()}".strip()
        else:
            rows.append([part.strip() for part in line.split(" | ")] + [""])
    return tuple(ExtensionPoint(*row) for row in rows)


INDEX: tuple[ExtensionPoint, ...] = _parse(_POINTS)


def index_table() -> str:
    """The index as the README's "Extending segkit" table shows it (a test keeps the two equal)."""
    rows = ["| extension point | registry | picked by | to add one |", "|---|---|---|---|"]
    rows += [f"| {e.what} | `{e.where}` | `{e.key}` | {e.add} |" for e in INDEX]
    return "\n".join(rows) + "\n"


__all__ = ["INDEX", "ExtensionPoint", "Registry", "index_table"]
