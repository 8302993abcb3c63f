"""Every name a config picks from a registry or a library, checked once after loading and before any work starts:
a typo in the third model's loss, a misspelt TTA or a LightGBM parameter LightGBM would silently ignore must not
surface after the first two models have trained for hours.

Checked: each model's architecture (smp's own mapping, ``segkit.models.ARCHS``), encoder (smp's encoders, or
``tu-<timm model>``), constructor ``params`` (against the smp class's signature, and by building the network on
the meta device, which costs no memory), and its train section's
optimizer, schedule, augmentation, losses and monitor; ``predict.tta``; ``ensemble.methods`` and
``ensemble.choose``; ``ensemble.stack_params`` (against LightGBM's own parameter list and aliases);
``data.mask_source``; ``tune.morph_steps``; ``metric``.
Each error names the file (or the command line) that set the key, the key and the known names.

The command line and ``segkit run`` call ``check`` right after ``load_config``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from segkit.compute.device import resolve_device
from segkit.config import Config
from segkit.data.augment import check_channels
from segkit.data.augment3d import Augment3D
from segkit.data.sources import SOURCES
from segkit.ensemble import check_choice, method_names
from segkit.errors import ConfigError
from segkit.inference.tta import TTA
from segkit.losses import EDGE_TERMS, LossSchedule
from segkit.metrics import get_metric
from segkit.models import ARCHS, RESERVED_PARAMS, TIMM_PREFIX, build_model, encoder_names, is_encoder
from segkit.optim import OPTIMIZERS, SCHEDULES
from segkit.postprocess.masks import MASK_STEPS
from segkit.stages.train.fold import MONITORS
from segkit.stages.train.volumetric import check_volume_data, checked_patch


def _at(cfg: Config, key: str, check: Callable[[], object]) -> None:
    """Run ``check``; a ConfigError it raises is given the file that set ``key``."""
    try:
        check()
    except ConfigError as err:
        raise ConfigError(f"{cfg.origin(key)}: {err}") from None


def _unknown(key: str, kind: str, name: str, known) -> ConfigError:
    shown = ", ".join(sorted(known)) if len(known) <= 40 else ", ".join(sorted(known)[:40]) + ", ..."
    return ConfigError(f"{key}: unknown {kind} {name!r}; known: {shown}")


def check_models(cfg: Config) -> None:
    for i, m in enumerate(cfg.models):
        key = f"models[{m.name}]"
        _at(cfg, f"models.{i}.arch", lambda: ARCHS.get(m.arch, key=f"{key}.arch"))
        if ARCHS.get(m.arch).dims == 3:
            check_volumetric(cfg, m, i)
            continue
        arch = ARCHS.get(m.arch)
        if arch.encoders is not None:  # a network that takes only some encoders (SegNet) or builds its own
            if m.encoder not in arch.encoders:
                raise ConfigError(f"{cfg.origin(f'models.{i}.encoder')}: {key}.encoder: {arch.name} takes "
                                  f"{m.encoder!r} as no encoder; it takes {', '.join(arch.encoders)}")
        elif not is_encoder(m.encoder):
            raise ConfigError(f"{cfg.origin(f'models.{i}.encoder')}: {key}.encoder: unknown encoder {m.encoder!r}; "
                              f"use one of smp's ({', '.join(encoder_names()[:12])}, ...) or tu-<timm model>")
        accepted = [name for name, p in inspect.signature(arch.cls.__init__).parameters.items()
                    if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        # smp passes the names it does not take on to the encoder: timm refuses a wrong one when the model is built
        # (below), smp's own encoders drop it without a word, so for them a name smp does not take is a typo.
        bad = [p for p in m.params if p not in accepted and not m.encoder.startswith(TIMM_PREFIX)]
        if bad:
            known = [p for p in accepted if p not in RESERVED_PARAMS]
            raise ConfigError(f"{cfg.origin(f'models.{i}.params')}: {key}.params: {arch.name} takes no {bad[0]!r} "
                              f"(smp would ignore it); it takes {', '.join(known)}")
        # Built on the meta device (no memory, no weights, a tenth of a second): every constructor error, such as
        # decoder channels that do not fit the depth or a timm argument that does not exist, surfaces now.
        with torch.device("meta"):
            _at(cfg, f"models.{i}", lambda: build_model(m, cfg.data.input_channels, cfg.data.mode,
                                                        len(cfg.data.classes), pretrained=False))
        if arch.instances:
            check_detector(cfg, m, i)
        tcfg = cfg.train_for(m)
        where = f"models.{i}.train" if m.train else "train"
        _at(cfg, f"{where}.augment", lambda: check_channels(tcfg.augment, cfg.data.input_channels,
                                                             len(cfg.data.classes), key=f"{key} train.augment"))
        check_train(cfg, m, i)


def check_detector(cfg: Config, m, i: int) -> None:
    """A detector (Mask R-CNN) learns objects and renders them as the mask and contour channels a U-Net of the same
    competition learns: it needs an instance competition with those targets, and its contour as wide as theirs."""
    key = f"{cfg.origin(f'models.{i}.arch')}: models[{m.name}].arch: {m.arch}"
    spec = cfg.data.instances
    if spec is None:
        raise ConfigError(f"{key} detects objects; it needs an instance competition (data.instances: the objects' "
                          f"label maps or per-object rows). For semantic masks use a segmentation network (Unet, "
                          f"FPN, ...)")
    arch = ARCHS.get(m.arch)
    width = m.params.get("contour_width", inspect.signature(arch.cls.__init__).parameters["contour_width"].default)
    if "contour" in spec.targets and width != spec.contour_width:
        raise ConfigError(f"{cfg.origin(f'models.{i}.params')}: models[{m.name}].params.contour_width: {width} px, "
                          f"but data.instances.contour_width is {spec.contour_width}: the rendered contour must be "
                          f"the one the decoder is tuned for (set params.contour_width: {spec.contour_width})")
    if cfg.pseudo.round or cfg.pseudo.rounds:
        raise ConfigError(f"{cfg.origin('pseudo')}: pseudo: {m.arch} (models[{m.name}]) trains on objects; "
                          f"pseudo labels are masks. Leave pseudo unset for a config with a detector")


def check_volumetric(cfg: Config, m, i: int) -> None:
    """A 3D network: a volume competition normalised per case, a patch of the network's stride, the 3D
    augmentation's name; built on the meta device like the others (its params checked by MONAI)."""
    key = f"models[{m.name}]"
    tcfg = cfg.train_for(m)
    where = f"models.{i}.train" if m.train else "train"
    _at(cfg, f"models.{i}.arch", lambda: check_volume_data(cfg, m))
    with torch.device("meta"):
        _at(cfg, f"models.{i}", lambda: build_model(m, cfg.data.channels, cfg.data.mode, len(cfg.data.classes),
                                                    pretrained=False))
    _at(cfg, f"{where}.patch_size", lambda: checked_patch(m, tcfg, key))
    _at(cfg, f"{where}.augment", lambda: Augment3D(tcfg.augment, tcfg.patch_size, key=f"{key} train.augment"))
    check_train(cfg, m, i)


def check_train(cfg: Config, m, i: int) -> None:
    """A model's train section, whatever its network: optimizer, schedule, losses and monitor."""
    key = f"models[{m.name}]"
    tcfg = cfg.train_for(m)
    where = f"models.{i}.train" if m.train else "train"
    _at(cfg, f"{where}.optimizer", lambda: OPTIMIZERS.get(tcfg.optimizer, key=f"{key} train.optimizer"))
    _at(cfg, f"{where}.schedule.name", lambda: SCHEDULES.get(tcfg.schedule.name, key=f"{key} train.schedule.name"))
    _at(cfg, f"{where}.loss", lambda: LossSchedule(tcfg, cfg.data.mode, len(cfg.data.classes)))
    terms = {t.lower() for t in tcfg.loss} | {t.lower() for s in tcfg.loss_stages for t in s.terms}
    edge_terms = sorted(terms & set(EDGE_TERMS))
    if edge_terms and not ARCHS.get(m.arch).edges:
        with_edges = [ARCHS.get(a).name for a in ARCHS.names() if ARCHS.get(a).edges]
        raise ConfigError(f"{cfg.origin(f'{where}.loss')}: {key} train.loss: {edge_terms[0]} trains a network's "
                          f"edge output; {m.arch} has none (networks with one: {', '.join(with_edges)})")
    monitors = {"loss", cfg.metric, *MONITORS}
    if tcfg.monitor is not None and tcfg.monitor not in monitors:
        raise ConfigError(f"{cfg.origin(f'{where}.monitor')}: {key} train.monitor: {tcfg.monitor!r}; use score "
                          f"(= {cfg.metric}), dice, iou or loss")


def check_predict(cfg: Config) -> None:
    _at(cfg, "predict.tta", lambda: TTA.get(cfg.predict.tta, key="predict.tta"))
    if any(ARCHS.get(m.arch).dims == 3 for m in cfg.models):
        _at(cfg, "predict.tta_3d", lambda: TTA.get(cfg.predict.tta_3d, key="predict.tta_3d"))


def check_ensemble(cfg: Config) -> None:
    names: list[str] = []
    _at(cfg, "ensemble.methods", lambda: names.extend(method_names(cfg)))
    _at(cfg, "ensemble.choose", lambda: check_choice(cfg, names, [m.name for m in cfg.models]))
    if cfg.ensemble.stack_params:
        known = lightgbm_parameters()
        for name in cfg.ensemble.stack_params:
            if name not in known:
                raise ConfigError(f"{cfg.origin('ensemble.stack_params')}: "
                                  f"{_unknown('ensemble.stack_params', 'LightGBM parameter', name, known)}")


def lightgbm_parameters() -> set[str]:
    """Every parameter name and alias LightGBM's own library knows (LightGBM ignores others without a word)."""
    from lightgbm.basic import _ConfigAliases  # here: importing LightGBM costs a second; only stacking needs it

    names: set[str] = set()
    for name, aliases in _ConfigAliases._get_all_param_aliases().items():
        names.add(name)
        names.update(aliases)
    return names


def check_data(cfg: Config) -> None:
    if cfg.data.mask_source is not None:
        _at(cfg, "data.mask_source", lambda: SOURCES.get(cfg.data.mask_source, key="data.mask_source"))


def check_tune(cfg: Config) -> None:
    for i, name in enumerate(cfg.tune.morph_steps):
        _at(cfg, "tune.morph_steps", lambda: MASK_STEPS.get(name, key=f"tune.morph_steps[{i}]"))


def check(cfg: Config) -> None:
    """Every name of ``cfg`` (see the module docstring); a ConfigError naming file, key and the known names."""
    _at(cfg, "metric", lambda: get_metric(cfg.metric, key="metric"))
    check_data(cfg)
    # A GPU asked for where there is none fails before any stage runs, not when the first one needs the device.
    _at(cfg, "device", lambda: resolve_device(cfg.device))
    check_models(cfg)
    check_predict(cfg)
    check_ensemble(cfg)
    check_tune(cfg)


__all__ = ["check", "lightgbm_parameters"]
