"""The instance config: its `task` section is the schema's, and its settings are the library's parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from pipeline.config import load_config
from pipeline.instances.postprocess import select_thresholds
from pipeline.instances.targets import instance_classes
from transforms.instances import InstanceTargetsd

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cell_dsb_instances.yaml"


def test_instance_config_loads_and_its_task_settings_apply():
    cfg = load_config(CONFIG)
    task = cfg["task"]
    assert task["kind"] == "instance" and cfg["network"]["out_channels"] == 3  # background, interior, border
    assert set(yaml.safe_load(CONFIG.read_text())["task"]) <= set(task)  # every key the file sets is in the schema
    InstanceTargetsd("instance", border_width=task["border_width"], border=task["border"])
    ids = np.zeros((16, 16), int)
    ids[2:8, 2:14], ids[8:14, 2:14] = 1, 2
    probs = np.stack([instance_classes(ids) == k for k in range(3)]).astype(np.float32)
    pp = task["postprocess"]
    s = select_thresholds(
        [(probs, ids)],
        interior_thresholds=pp["interior_thresholds"],
        min_sizes=pp["min_sizes"],
        markers=pp["markers"],
        max_hole_size=pp["max_hole_size"],
        foreground_threshold=pp["foreground_threshold"],
        metric=pp["metric"],
    )
    assert s["score"] == 1.0


def _imports(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layering_of_the_instance_modules():
    root = CONFIG.parents[1]
    # transforms import nothing from pipeline but errors and the registry (DESIGN.md, layers)
    allowed = {"pipeline.errors", "pipeline.registry"}
    assert {n for n in _imports(root / "transforms" / "instances.py") if n.startswith("pipeline")} <= allowed
    # the library modules sit below the engines and never read the config
    for path in [*(root / "pipeline" / "instances").glob("*.py"), root / "pipeline" / "data" / "synth" / "dense.py"]:
        bad = {n for n in _imports(path) if n.startswith(("pipeline.engines", "pipeline.config", "pipeline.cli"))}
        assert not bad, (path.name, bad)
