"""How config trees combine: a file over its bases, a budget over the file, a model's ``train:`` over the train
section. Dicts merge key by key; anything else (and the mappings in ATOMIC_KEYS) is replaced whole."""

from __future__ import annotations

# Mappings that are one value, replaced whole: a file saying `loss: {focal: 1}` means focal alone, not focal
# added to the base's bce + dice; and `loss_params: {}` drops the parameters of a base's terms it no longer uses.
ATOMIC_KEYS = {"loss", "loss_params"}


def merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ATOMIC_KEYS:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
