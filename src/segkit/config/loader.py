"""Load a YAML config: resolve ``base:`` files, apply command-line overrides, validate, name the culprit on error.

Inheritance works like detectron2 / mmseg: a file may say ``base: base.yaml`` (or a list); the bases are merged
first, then the file's own keys on top (dicts merge key by key, anything else replaces). Every leaf remembers which
file (or the command line) set it, so a validation error names both the key and the file it came from.

Budgets. A recipe is often wanted at two sizes: a few epochs on a laptop CPU, the full recipe on a GPU. A file may
hold named sets of overrides under ``budgets:`` and pick one with ``budget:``; the command line picks another with
``budget=gpu``. The chosen set is merged over the whole file (after its bases, before the other command-line
overrides), so a budget states only what differs and everything else stays shared.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from segkit.config.merge import merge
from segkit.config.schema import Config
from segkit.errors import ConfigError

BASE_KEY = "base"
BUDGETS_KEY = "budgets"
BUDGET_KEY = "budget"
COMMAND_LINE = "command line"


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = Path(path)
    tree, origins = _load_tree(path, seen=())
    pairs = parse_overrides(overrides)
    tree, origins = _apply_budget(tree, origins, pairs, path)
    for key, value in pairs:
        if key == BUDGET_KEY:
            continue
        _set_dotted(tree, key, value)
        origins[key] = COMMAND_LINE
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_explain(err, origins, path)) from None
    cfg.source = str(path)
    cfg.origins = origins
    import_modules(cfg.imports, path.parent)
    return cfg


def import_modules(names: list[str], folder: Path) -> None:
    """Import the config's ``imports`` (where its own components register themselves), looking beside the config
    file first. Imported once per process, as any module."""
    for i, name in enumerate(names):
        if name in sys.modules:
            continue
        added = str(folder.resolve()) not in sys.path
        if added:
            sys.path.insert(0, str(folder.resolve()))
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name.split(".")[0] and err.name != name:
                raise  # the module was found; something it imports is missing: its own error says what
            raise ConfigError(f"imports[{i}]: no module {name!r} (looked beside {folder} and on the Python path)"
                              ) from None
        finally:
            if added:
                sys.path.remove(str(folder.resolve()))


def _apply_budget(tree: dict, origins: dict[str, str], pairs: list[tuple[str, Any]],
                  path: Path) -> tuple[dict, dict[str, str]]:
    """Merge ``budgets[<budget>]`` over the tree; the command line's ``budget=`` wins over the file's."""
    budgets = tree.pop(BUDGETS_KEY, None) or {}
    chosen = tree.get(BUDGET_KEY)
    where = origins.get(BUDGET_KEY, str(path))
    for key, value in pairs:
        if key == BUDGET_KEY:
            chosen, where = value, COMMAND_LINE
    if not isinstance(budgets, dict):
        raise ConfigError(f"{_origin(BUDGETS_KEY, origins) or path}: {BUDGETS_KEY}: must map budget names to "
                          f"overrides")
    if chosen is None:
        return tree, origins
    if chosen not in budgets:
        names = ", ".join(map(str, budgets)) or "none defined"
        raise ConfigError(f"{where}: {BUDGET_KEY}: {chosen!r} is not one of the file's budgets ({names})")
    top = budgets[chosen] or {}
    key = f"{BUDGETS_KEY}.{chosen}"
    if not isinstance(top, dict):
        raise ConfigError(f"{_origin(key, origins) or path}: {key}: must be a mapping of keys")
    tree = merge(tree, top)
    tree[BUDGET_KEY] = chosen
    origins = dict(origins)
    label = f"{_origin(key, origins) or path} (budget {chosen})"
    origins.update({k: label for k in _leaf_keys(top)})
    origins[BUDGET_KEY] = where
    return tree, origins


def parse_overrides(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["train.lr=1e-3", "models.0.encoder=resnet18"]`` -> [(key, typed value)]; values are parsed as YAML."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _load_tree(path: Path, seen: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    path = path.resolve() if path.is_absolute() else path
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular '{BASE_KEY}' chain")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    bases = tree.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    origins: dict[str, str] = {}
    for base in bases:
        base_tree, base_origins = _load_tree(path.parent / base, seen + (path.resolve(),))
        merged = merge(merged, base_tree)
        origins.update(base_origins)
    merged = merge(merged, tree)
    origins.update({k: str(path) for k in _leaf_keys(tree)})
    return merged, origins


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        keys = []
        for k, v in tree.items():
            keys += _leaf_keys(v, f"{prefix}{k}.")
        return keys
    if isinstance(tree, list) and tree:
        keys = [prefix[:-1]]
        for i, v in enumerate(tree):
            keys += _leaf_keys(v, f"{prefix}{i}.")
        return keys
    return [prefix[:-1]]


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {key}: {'.'.join(parts[:-1])} is not a mapping")


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _explain(err: ValidationError, origins: dict[str, str], path: Path) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        where = _origin(key, origins) or str(path)
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        lines.append(f"{where}: {key}: {msg}")
    return "invalid config: " + "; ".join(lines)


def _origin(key: str, origins: dict[str, str]) -> str | None:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        hit = origins.get(".".join(parts[:n]))
        if hit:
            return hit
    # A key missing everywhere (a required field) is attributed to the longest prefix set somewhere.
    for k, v in origins.items():
        if k.startswith(key + "."):
            return v
    return None
