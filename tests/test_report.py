"""Reports a person can read: curves.png, the TP / FP / FN overlays and report.html."""

from __future__ import annotations

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


def test_a_volume_is_shown_in_three_orthogonal_slices_through_its_largest_error(tmp_path):
    import nibabel as nib

    from pipeline.engines import views

    truth = np.zeros((20, 24, 16), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[12:18, 14:20, 9:13] = 1  # the one false positive blob, far from the middle slice
    image = np.random.default_rng(0).normal(size=truth.shape).astype(np.float32)
    for name, arr in (("img", image), ("truth", truth), ("pred", pred)):
        nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.5, 1.0])), tmp_path / f"{name}.nii.gz")
    view = views.load_case_view("v1", *(tmp_path / f"{n}.nii.gz" for n in ("img", "truth", "pred")))
    assert view.spacing == (1.0, 1.0, 2.5)
    point = views.focus_point(view)
    assert 12 <= point[0] < 18 and 14 <= point[1] < 20 and 9 <= point[2] < 13, point
    fig = views.overlay_figure(view)
    titles = [ax.get_title() for ax in fig.axes]
    for name, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        assert f"prediction {name} slice {point[axis]}" in titles, titles
    assert len(fig.axes) == 9
