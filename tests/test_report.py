"""Reports a person can read: curves.png, the TP / FP / FN overlays and report.html."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from pipeline.engines import report


def _history(epochs: int = 3) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {"epoch": e, "lr": 0.01 / e, "train_loss": 1 / e, "w_region": 1.0, "w_boundary": 0.1 * e,
             "val_dice": 0.5 + 0.1 * e, "val_dice_1": 0.4 + 0.1 * e, "val_dice_2": 0.6 + 0.1 * e}
        )  # fmt: skip
    return rows


def test_curves_name_their_axes_keep_integer_epochs_and_set_the_mean_apart():
    fig = report.curves_figure(_history(), metric="dice", loss="compound")
    fig.canvas.draw()
    loss_ax, metric_ax, lr_ax = fig.axes
    assert loss_ax.get_ylabel() == "compound loss" and "region" in loss_ax.get_title()
    assert "boundary" in loss_ax.get_title()
    assert metric_ax.get_ylabel() == "Dice (validation)" and lr_ax.get_ylabel() == "learning rate"
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    lines = {line.get_label(): line for line in metric_ax.get_lines()}
    mean, classes = lines.pop("mean over classes"), list(lines.values())
    assert [line.get_label() for line in classes] == ["class 1", "class 2"]
    assert to_rgba(mean.get_color()) == to_rgba("black")
    assert all(mean.get_linewidth() > 2 * c.get_linewidth() for c in classes)
    colours = {to_rgba(c.get_color()) for c in classes}
    assert len(colours) == 2 and to_rgba("black") not in colours
    assert len({c.get_marker() for c in classes} | {mean.get_marker()}) == 3


def test_curves_of_one_epoch_label_a_distance_metric():
    fig = report.curves_figure([{"epoch": 1, "train_loss": 1.0, "lr": 0.1, "val_hd95": 3.0, "val_hd95_1": 3.0}],
                               metric="hd95")  # fmt: skip
    fig.canvas.draw()
    assert fig.axes[1].get_ylabel() == "HD95 (mm) (validation)"
    assert [t for t in fig.axes[0].get_xticks() if 0.5 < t < 1.5] == [1]


def test_errors_are_three_colours_on_a_grey_version_of_a_colour_image(tmp_path):
    from PIL import Image

    from pipeline.engines import views

    orange = np.zeros((24, 32, 3), np.uint8)
    orange[..., 0], orange[..., 1] = 230, 120  # a fundus-like orange: red on it would not show
    orange[:, 16:] //= 2
    truth, pred = np.zeros((24, 32), np.uint8), np.zeros((24, 32), np.uint8)
    truth[4:12, 4:12] = 255  # picture rows 4-11, columns 4-11
    pred[8:16, 8:16] = 255
    Image.fromarray(orange).save(tmp_path / "img.png")
    Image.fromarray(truth).save(tmp_path / "truth.png")
    Image.fromarray(pred).save(tmp_path / "pred.png")
    view = views.load_case_view("c1", tmp_path / "img.png", tmp_path / "truth.png", tmp_path / "pred.png")
    cut = views.planes(view, 0, 0)
    picture = views.compose(cut["grey"], cut["errors"], "errors", cut["grey"].shape)
    tp, fp, fn, background = picture[9, 9], picture[14, 14], picture[5, 5], picture[20, 2]
    assert background[0] == background[1] == background[2], "the image is drawn in grey"
    colours = [tuple(int(v) for v in c) for c in (tp, fp, fn)]
    assert len(set(colours)) == 3 and all(max(c) - min(c) > 60 for c in colours), colours  # saturated, distinct
    for got, name in zip(colours, ("true positive", "false positive", "miss"), strict=True):
        want = np.array(views.COLOURS[name])
        assert np.abs(np.array(got) - want).max() < 70, (name, got, want)
    # 16 px overlap of 64 + 64: Dice 2 * 16 / 128
    assert views.dice_text(view) == "Dice 0.250"
    fig = views.overlay_figure(view)
    assert fig._suptitle.get_text() == "c1: Dice 0.250"


def test_a_volume_is_shown_in_three_orthogonal_slices_through_its_structure_and_errors(tmp_path):
    import nibabel as nib

    from pipeline.engines import views

    truth = np.zeros((20, 24, 16), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[12:16, 14:18, 9:15] = 1  # a larger false positive blob, far from the middle slices and from the truth
    image = np.random.default_rng(0).normal(size=truth.shape).astype(np.float32)
    for name, arr in (("img", image), ("truth", truth), ("pred", pred)):
        nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.5, 1.0])), tmp_path / f"{name}.nii.gz")
    view = views.load_case_view("v1", *(tmp_path / f"{n}.nii.gz" for n in ("img", "truth", "pred")))
    assert view.spacing == (1.0, 1.0, 2.5)
    point = views.focus_point(view)
    assert all(2 <= p < 6 for p in point), point  # through the truth, not the larger false positive
    pred[2:6, 2:6, 2:6] = 0  # no truth found: the slices still cut the truth
    assert views.focus_point(views.CaseView("v", None, truth, pred, (1.0,) * 3)) == point
    fp_only = views.CaseView("v", None, np.zeros_like(truth), pred, (1.0,) * 3)  # nothing to find
    assert views.focus_point(fp_only) == (14, 16, 12)  # the false positives, in the middle of equal slices
    fig = views.overlay_figure(view)
    titles = [ax.get_title() for ax in fig.axes]
    for name, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        assert f"prediction {name} slice {point[axis]}" in titles, titles
    assert len(fig.axes) == 9


def _evaluation(tmp_path, dims: int = 3):
    """An evaluation folder of three cases (predictions: the labels shifted by two voxels) whose
    cases.json names the images, as ``medseg evaluate --checkpoint ... --save-predictions`` does."""
    from _synthetic import write_folders, write_image

    from pipeline.engines.evaluator import evaluate_folder
    from pipeline.engines.html_report import write_case_index
    from pipeline.io import read_label

    data = write_folders(tmp_path / "data", n=3, size=24 if dims == 3 else 40, dims=dims)
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in sorted((data / "labels").iterdir()):
        write_image(pred / f.name, np.roll(read_label(f).array, 2, axis=0))
    out = tmp_path / "eval"
    evaluate_folder(pred, data / "labels", out)
    cases = [
        {"case": f.name.split(".")[0], "image": data / "images" / f.name, "label": f, "prediction": pred / f.name}
        for f in sorted((data / "labels").iterdir())
    ]
    write_case_index(out, cases, [0, 1])
    return out


def test_report_html_is_self_contained_sortable_and_has_a_slider_per_volume(tmp_path, capsys):
    import json
    import re

    from pipeline.cli import main

    out = _evaluation(tmp_path)
    assert (out / "report.html").is_file()  # evaluate wrote one (without images: no cases.json then)
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert re.findall(r'(?:src|href)="(?!data:image/png;base64,)', page) == []  # nothing fetched from anywhere
    assert "http:" not in page and "https:" not in page and "<link" not in page
    assert len(page) < 2_000_000
    assert '<table class="sortable" id="per-case">' in page and "addEventListener('click'" in page
    blocks = re.findall(r'<div class="case volume" data-slices="([^"]+)"', page)
    assert len(blocks) == 3
    for block in blocks:
        data = json.loads(block.replace("&quot;", '"'))
        assert 2 <= len(data["z"]) <= 32 and len(data["src"]) == len(data["z"])
        assert len(set(data["src"])) > 1, "the slices differ"
    assert re.search(r"<h3>case0: Dice 0\.\d{3}</h3>", page)


def test_report_of_a_run_folder_draws_the_curves_from_its_log_and_refuses_other_folders(tmp_path, capsys):
    from pipeline.cli import main

    run = tmp_path / "run"
    run.mkdir()
    report.write_history(_history(), run / "log.csv")
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert 'alt="training curves" src="data:image/png;base64,' in page and '<table class="sortable" id="log">' in page
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty: neither a training run folder (log.csv or checkpoints/) nor an" in err[0], err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=3000"]
    done = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_report_html_in_a_real_browser_shows_pictures_and_the_slider_moves_the_slice(tmp_path):
    import json
    import re

    from PIL import Image

    from pipeline.engines.html_report import build_report

    page = build_report(_evaluation(tmp_path)).resolve()
    shots = {}
    for position in ("0", "99"):  # #slice=K opens every slider at its K-th slice (the last one for 99)
        shot = tmp_path / f"slice{position}.png"
        _chromium("--window-size=1200,1600", f"--screenshot={shot}", f"{page.as_uri()}#slice={position}")
        shots[position] = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    first, last = shots["0"], shots["99"]
    assert first.std() > 20 and len(np.unique(first.reshape(-1, 3), axis=0)) > 50, "a blank screenshot"
    changed = np.argwhere(np.abs(first - last).max(axis=2) > 0)
    assert changed.size, "moving the slider changed nothing on the screen"
    height, width = changed.max(axis=0) - changed.min(axis=0)
    assert height > 100 and width > 300, (height, width)  # the pictures, not only the slider's thumb
    # the document after the script ran: each volume's picture is its last slice
    dom = _chromium(f"{page.as_uri()}#slice=99", "--dump-dom")
    shown = re.findall(r'<img class="slice"[^>]*data-slice="(\d+)"', dom) + re.findall(
        r'data-slice="(\d+)"[^>]*class="slice"', dom
    )
    blocks = re.findall(r'data-slices="([^"]+)"', page.read_text())
    last = [str(json.loads(b.replace("&quot;", '"'))["z"][-1]) for b in blocks]
    initial = re.findall(r'<img class="slice"[^>]*data-slice="(\d+)"', page.read_text())
    assert len(shown) == 3 and shown == last and shown != initial, (shown, last, initial)
    # sorting: #sort=COLUMN runs what a click on that header runs
    table = re.search(
        r'<table class="sortable" id="per-case">.*?</table>', _chromium(f"{page.as_uri()}#sort=dice", "--dump-dom")
    )
    rows = re.findall(r"<tr><td[^>]*>(case\d)</td><td[^>]*>1</td><td[^>]*>([\d.]+)</td>", table.group(0))
    dice = [float(v) for _, v in rows]
    assert len(dice) == 3 and dice == sorted(dice) and [c for c, _ in rows] != ["case0", "case1", "case2"], rows


def test_the_slices_of_two_lungs_cut_a_lung_not_the_empty_middle():
    from pipeline.engines import views

    truth = np.zeros((20, 12, 10), np.uint8)
    truth[2:7, 2:10, 2:8] = 1
    truth[13:19, 2:10, 2:8] = 1  # the right one a little larger; nothing between x 7 and 12
    view = views.CaseView("two", None, truth, truth.copy(), (1.0, 1.0, 1.0))
    x, y, z = views.focus_point(view)
    assert (2 <= x < 7 or 13 <= x < 19) and (y, z) == (6, 5), (x, y, z)  # in a lung, mid-height


def test_per_image_dice_is_scored_inside_the_field_of_view(tmp_path):
    """The picture's Dice equals the evaluation's: outside DRIVE's field of view nothing counts."""
    import numpy as np

    from pipeline.engines.views import dice_text, load_case_view
    from pipeline.io import write_label

    truth = np.zeros((20, 20), np.uint8)
    truth[5:10, 5:10] = 255
    pred = truth.copy()
    pred[15:19, 15:19] = 255  # a false positive outside the field of view
    fov = np.zeros((20, 20), np.uint8)
    fov[:12, :12] = 255
    for name, array in (("t.png", truth), ("p.png", pred), ("f.png", fov)):
        write_label(tmp_path / name, array)
    args = ("c", None, tmp_path / "t.png", tmp_path / "p.png", [0, 255])
    assert dice_text(load_case_view(*args, fov=tmp_path / "f.png")) == "Dice 1.000"
    assert dice_text(load_case_view(*args)) == f"Dice {2 * 25 / (25 + 41):.3f}"
