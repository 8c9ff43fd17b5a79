from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.demo import MARKER

pytestmark = pytest.mark.slow


def test_quick_demo_writes_report_and_replaces_its_own_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[5/5] writing the report" in printed and "demo finished" in printed
    for rel in ("report.md", "run/curves.png", "run/log.csv", "run/checkpoints/best.pt", "test/per_case.csv"):
        assert (out / rel).is_file(), rel
    summary = json.loads((out / "test" / "summary.json").read_text())
    assert summary["n_cases"] >= 1 and 0.0 <= summary["per_class"]["1"]["dice"]["mean"] <= 1.0
    assert list((out / "overlays").glob("*.png")) and list((out / "infer").glob("*.png"))
    report = (out / "report.md").read_text()
    assert "| 1 |" in report and "![curves](run/curves.png)" in report
    page = (out / "report.html").read_text()  # beside report.md: the curves and the test cases' pictures
    assert 'alt="training curves" src="data:image/png;base64,' in page and '<img class="slice"' in page
    # a second run replaces the demo's own folder
    (out / "stale.txt").write_text("old")
    assert main(["demo", "--quick", "--out", str(out), "--network", "resunet"]) == 0
    assert not (out / "stale.txt").exists() and (out / MARKER).exists()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "was not made by medseg demo" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "precious"


def test_demo_unknown_network_is_one_line(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--network", "unte"]) == 2
    err = capsys.readouterr().err
    assert "unknown network 'unte'" in err and "Did you mean 'unet'" in err
