"""The shape of the package: its import layers (import-linter), artifact paths that come from segkit.artifacts.layout
only, imports inside functions that say why they are there, and a README whose pipeline table and layout tree are
the code's."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "segkit"

# Modules that may spell path parts, and why: the layout itself; the config's defaults of the layout's roots (runs,
# folds, submissions) and of the data folder; a probability store's own inner format (<id>.npy, manifest.json);
# the demo, which writes a competition's files, not a run's; torch hub's cache folder; an offline bundle's own inner
# layout (and the source files its segkit wheel is built from).
OWN_PATHS = {"artifacts/layout.py", "config/schema.py", "artifacts/probs.py", "data/demo.py", "models/weights.py",
             "bundle/files.py", "bundle/install.py", "bundle/targets.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_import_contracts_hold():
    """Layers (command line > ablation > pipeline > name checks > stages and tools > offline bundle > building
    blocks), stages that never import each other, and no cycles between sibling modules, as pyproject.toml
    declares them."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


# Reading tune.json: its text or bytes, a handle on it, or the JSON of it.
TUNE_READ = re.compile(r"tune\.json\)?\.(read_text|read_bytes|open)\(|json\.loads?\([^)]*tune")


# Reading the ensemble's choice.json or state.json.
CHOICE_READ = re.compile(r"(choice|state)\)?\.(read_text|read_bytes|open)\(|json\.loads?\([^)]*(choice|state)")


def test_only_the_ensembles_own_module_reads_its_choice():
    """choice.json and state.json have one owner (segkit.ensemble.chosen)."""
    found = [f"{name}:{n + 1}: {line.strip()}" for name, text in _modules() if name != "ensemble/chosen.py"
             for n, line in enumerate(text.splitlines()) if CHOICE_READ.search(line)]
    assert not found, "the ensemble's choice read outside segkit.ensemble.chosen:\n" + "\n".join(found)
    assert CHOICE_READ.search("choice = json.loads(paths.choice.read_text())")


def test_only_postprocess_reads_tune_json():
    """tune.json has one owner (segkit.postprocess.tuned): every other module goes through ``Tuned``."""
    found = [f"{name}:{n + 1}: {line.strip()}" for name, text in _modules() if not name.startswith("postprocess/")
             for n, line in enumerate(text.splitlines()) if TUNE_READ.search(line)]
    assert not found, "tune.json read outside segkit.postprocess:\n" + "\n".join(found)
    assert TUNE_READ.search("saved = json.loads(cfg.layout.tune.json.read_text())")


def test_the_predict_stage_is_only_a_stage():
    """The engine lives in segkit.inference; the stage keeps its units and its run."""
    assert len((PACKAGE / "stages" / "predict.py").read_text().splitlines()) < 200


def _literal(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _hand_made_paths(tree: ast.AST) -> list[int]:
    """Lines that join a literal onto a path (``x / "oof"``, ``x / f"fold{k}"``), make a Path or an os.path.join
    of a literal, or spell a path with a fold folder in an f-string (``f"{root}/fold{k}/best.pt"``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _literal(node.right):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("Path", "os.path.join", "pathlib.Path"):
            if any(_literal(a) for a in node.args):
                lines.append(node.lineno)
        elif isinstance(node, ast.JoinedStr):
            text = "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
            if re.search(r"(^|/)fold\{\}(/|\.|$)", text) and "/" in text:
                lines.append(node.lineno)
    return lines


def test_no_module_builds_an_artifact_path_by_hand():
    found = []
    for name, text in _modules():
        if name in OWN_PATHS:
            continue
        found += [f"{name}:{n}: {text.splitlines()[n - 1].strip()}" for n in _hand_made_paths(ast.parse(text))]
    assert not found, "paths built outside segkit.artifacts.layout:\n" + "\n".join(found)


def test_the_scan_catches_a_hand_made_path():
    tree = ast.parse('p = cfg.run_dir / model / f"fold{k}" / "oof"\nq = f"{root}/fold{k}/best.pt"\n'
                     'r = Path("runs")\ns = {f"fold{k}": 1.0}\n')
    assert sorted(_hand_made_paths(tree)) == [1, 1, 2, 3]  # the table column of line 4 is not a path


def test_imports_inside_functions_say_why():
    """Imports belong at the top of a module; one inside a function is there to spare start-up time (or wait for
    a condition), and its line or the line before says so."""
    found = []
    for name, text in _modules():
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line, before = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                    if "#" not in line and not before.startswith("#"):
                        found.append(f"{name}:{node.lineno}: {line.strip()}")
    assert not found, "imports inside functions without a reason:\n" + "\n".join(found)


# ------------------------------------------------------------------------------------------------------ README


def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", text, re.S)
    assert match, f"README.md has no <!-- {marker} --> block"
    return match.group(1)


def test_readme_pipeline_table_is_the_stage_registry():
    from segkit.commands import markdown_table

    assert _readme_block("stages").strip() == markdown_table().strip()


def test_readme_command_table_is_the_command_registry():
    from segkit.commands import commands_table

    assert _readme_block("commands").strip() == commands_table().strip()


def test_readme_package_map_is_the_package():
    """Every folder and top-level module of src/segkit has its line in the README's map, and nothing else does."""
    block = _readme_block("package").strip().removeprefix("```").removesuffix("```").strip("\n")
    mapped = {line.split()[0].rstrip("/") for line in block.splitlines() if line and not line.startswith(" ")}
    present = {p.name.removesuffix(".py") if p.is_file() else p.name for p in PACKAGE.iterdir()
               if (p.is_dir() and p.name != "__pycache__") or (p.suffix == ".py" and not p.name.startswith("__"))}
    assert {m.removesuffix(".py") for m in mapped} == present


def test_readme_layout_is_the_layout_modules():
    import segkit.artifacts.layout

    tree = segkit.artifacts.layout.__doc__.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    block = _readme_block("layout").strip().removeprefix("```").removesuffix("```").strip("\n")
    assert [line.rstrip() for line in block.splitlines()] == [line[4:].rstrip() for line in tree.splitlines()]


def test_every_declared_artifact_is_a_place_of_the_layout():
    from segkit.artifacts.layout import pattern
    from segkit.commands import ARTIFACTS, STAGES

    for stage in STAGES:
        for name in stage.reads + stage.writes:
            assert name in ARTIFACTS, (stage.name, name)
        reads, writes = stage.paths(pattern())
        assert writes and all(w.startswith(("runs/", "folds/", "submissions/")) for w in writes), (stage.name, writes)
