"""``medseg synth`` and ``medseg check-data`` through pipeline.cli.main."""

from __future__ import annotations

import numpy as np
import yaml
from PIL import Image

from pipeline.cli import main


def _config(tmp_path, root, **transforms) -> str:
    cfg = {
        "data": {"format": "drive", "root": str(root)},
        "network": {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2},
        "transforms": {"channels": [1], **transforms},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_synth_then_check_data_passes(tmp_path, capsys):
    root = tmp_path / "drive"
    assert main(["synth", "--kind", "vessel2d", "--out", str(root), "--n", "3", "--seed", "1", "--size", "48"]) == 0
    assert "wrote 3 vessel2d case(s)" in capsys.readouterr().out
    assert main(["check-data", "-c", _config(tmp_path, root)]) == 0
    assert "4 case(s) checked, no problems" in capsys.readouterr().out


def test_check_data_lists_every_problem_and_exits_2(tmp_path, capsys):
    root = tmp_path / "drive"
    main(["synth", "--kind", "vessel2d", "--out", str(root), "--n", "3", "--size", "48"])
    capsys.readouterr()
    bad = np.zeros((48, 48), np.uint8)
    bad[:5] = 128
    Image.fromarray(bad).save(root / "training/1st_manual/22_manual1.gif")
    (root / "test/images/01_test.tif").write_bytes(b"II*\x00 truncated")
    assert main(["check-data", "-c", _config(tmp_path, root)]) == 2
    out = capsys.readouterr().out
    assert "2 problem(s) in 4 case(s)" in out
    # the DRIVE layout's one table, 0/255, decides (no per-file rule)
    assert "22_manual1.gif: label values {128} are not the configured transforms.label_values ['0', '255']" in out
    assert "01_test.tif: cannot read" in out
    # RGB where grey is expected, for every case, through --set
    assert main(["check-data", "-c", _config(tmp_path, root), "--set", "transforms.channels=null"]) == 2
    assert "image has 3 channels (RGB), expected 1" in capsys.readouterr().out


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["synth", "--kind", "cell", "--out", str(tmp_path / "full")]) == 2
    assert "folder is not empty" in capsys.readouterr().err
    assert main(["check-data", "-c", _config(tmp_path, tmp_path / "missing")]) == 2
    assert "no training/images and training/1st_manual folders" in capsys.readouterr().err
    assert main(["check-data", "-c", _config(tmp_path, tmp_path, num_samples=0)]) == 2
    assert "transforms.num_samples: must be >= 1, got 0" in capsys.readouterr().err
