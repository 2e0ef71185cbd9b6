"""The package's layers: a module imports only from its own layer or the ones below it, so a
stage can be understood (and reused) without the stages built on it. Lazy imports inside
functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import monoscope

LAYERS = [
    {"artifacts", "runtime", "folders"},
    {"plotting", "config_args", "web", "distributed", "tensorfiles"},
    {"models", "data"},
    {"harvest"},
    {"sae"},
    {"plan"},
    {"train", "evaluate"},
    {"analyze"},
    {"steer", "interpret"},
    {"serve"},
    {"demo", "testing", "launch"},
    {"cli", "__init__"},
    {"__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def unit(path: Path, root: Path) -> str:
    """The layer unit of a module: its subpackage, or the top-level module's name."""
    return path.relative_to(root).parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "monoscope" and len(parts) > 1:
                units.add(parts[1])
    return units


def test_every_module_imports_only_its_layer_and_below():
    root = Path(monoscope.__file__).parent
    wrong = []
    for path in sorted(root.rglob("*.py")):
        own = unit(path, root)
        assert own in RANK, f"{own} is in no layer: add it to LAYERS"
        for other in imported_units(path) - {own}:
            assert other in RANK, f"{path} imports monoscope.{other}, which is in no layer"
            if RANK[other] >= RANK[own]:
                wrong.append(f"{path.relative_to(root)} imports monoscope.{other}")
    assert not wrong, "\n".join(wrong)


def test_library_calls_leave_process_settings_alone(tiny_llama, corpus_file, tmp_path):
    """Threads (and glibc's mmap threshold) are the CLI's to set, not a side effect of
    `harvest`, `train` or `analyze` called from a user's program."""
    import torch

    from monoscope.analyze import analyze
    from monoscope.testing import harvest_tiny
    from monoscope.train import TrainConfig
    from monoscope.train import run as train

    site = "blocks.1.hook_resid_post"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = harvest_tiny(tiny_llama, corpus_file, tmp_path / "acts", site)
        sae = train(
            TrainConfig(
                acts=str(store.path),
                out=str(tmp_path / "sae"),
                k=4,
                features="2x",
                batch_size=256,
                tokens=512,
                progress=False,
            )
        )
        analyze(sae, store, model=tiny_llama, out=tmp_path / "f.db", map=False, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
