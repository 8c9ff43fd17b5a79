"""Tests of pipeline.engines.planner and ``medseg plan``: rules, budget fit, determinism, configs that train."""

from __future__ import annotations

import math

import pytest
import yaml

from pipeline import cli
from pipeline.config import load_config
from pipeline.data.fingerprint import compute_fingerprint
from pipeline.data.synth import make_dataset
from pipeline.engines import planner
from pipeline.engines.planner import Measurement, measure_step, plan_config, render_plan, target_spacing, topology
from tests.test_fingerprint import write_nnunet


def fake_measure(network, patch, batch, device, roi=None, *, per_voxel=2e-6):
    """A deterministic compute model: time and memory linear in voxels × crops × width."""
    work = math.prod(patch) * batch * network["channels"][0] / 16
    window = math.prod(roi or patch) * network["channels"][0] / 16
    return Measurement(step_s=work * per_voxel, window_s=window * per_voxel / 3, peak_gb=0.4 + work * 1e-6, base_gb=0.4)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    base = tmp_path_factory.mktemp("plan")
    sizes = {"vessel2d": 64, "cell": 64, "lung": (32, 32, 16), "vessel3d": (32, 32, 16)}
    return {k: make_dataset(k, base / k, n=5, seed=0, size=s) for k, s in sizes.items()}


@pytest.fixture(scope="module")
def fps(synth):
    return {k: compute_fingerprint(root, workers=0, progress=False) for k, root in synth.items()}


def test_topology_follows_nnunet_rule():
    strides, kernels, divisor = topology([0.8, 0.8, 2.5], [160, 160, 40])
    assert strides == [[2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1]] + [[3, 3, 3]] * 5
    assert divisor == [32, 32, 8]
    # isotropic 2D: pool while the map is >= 8 (bottleneck 4, nnU-Net), capped at MAX_LEVELS levels
    assert topology([1.0, 1.0], [64, 64]) == ([[2, 2]] * 4, [[3, 3]] * 5, [16, 16])
    assert len(topology([1.0, 1.0], [1024, 1024])[0]) == planner.MAX_LEVELS - 1


def test_target_spacing_keeps_thick_axis_at_10th_percentile():
    fp = {"spacings": [[1, 1, 5.0]] * 8 + [[1, 1, 3.5]] * 2, "shapes": [[256, 256, 20]] * 10}
    spacing, reason = target_spacing(fp)
    assert spacing[:2] == [1.0, 1.0] and spacing[2] == pytest.approx(3.5)
    assert "10th percentile" in reason
    iso = {"spacings": [[1, 1, 1.2]] * 3, "shapes": [[64, 64, 64]] * 3}
    assert target_spacing(iso)[0] == [1.0, 1.0, 1.2]


@pytest.mark.parametrize("kind", ["vessel2d", "cell", "lung", "vessel3d"])
def test_plan_loads_as_config_and_values_follow_the_data(fps, kind):
    fp = fps[kind]
    plan = plan_config(fp, budget_minutes=5, measure=fake_measure)
    text = render_plan(plan)
    cfg = load_config(base=yaml.safe_load(text))
    patch = cfg["transforms"]["patch_size"]
    net = cfg["network"]
    divisor = [math.prod(s[a] for s in net["strides"]) for a in range(len(patch))]
    assert all(p % d == 0 for p, d in zip(patch, divisor, strict=True))
    assert all(p <= s for p, s in zip(patch, fp["median_shape"], strict=True))
    assert cfg["train"]["batch_size"] * cfg["transforms"]["num_samples"] >= 2
    assert net["norm"] == "instance" and net["out_channels"] == len(fp["label_values"])
    assert plan["_meta"]["predicted_minutes"] <= 5.0 and 4.0 < cfg["train"]["time_budget"] < 5.0  # less start-up
    assert "# " in text.splitlines()[-1] or "#" in text  # reasons are written
    assert "patch_size: " in text and "# median image" in text
    loss = cfg["loss"]
    if kind == "cell":
        assert loss["name"] == "compound" and loss["boundary"]["name"] == "band_bce"
        # pipeline.io reads the RGBA PNGs as RGB (alpha dropped), as training does: all three channels
        assert cfg["transforms"]["channels"] is None and cfg["network"]["in_channels"] == 3
    elif kind in ("vessel2d", "vessel3d"):
        assert loss["name"] == "compound" and loss["boundary"]["name"] == "boundary"
    else:
        assert loss["name"] == "dice_ce"
    if kind in ("lung", "vessel3d"):
        # nnU-Net's CTNormalization: clip to the foreground percentiles, z-score with foreground statistics
        intensity = cfg["transforms"]["intensity"]
        assert intensity["mode"] == "ct"
        lo, hi = intensity["window"]
        assert lo == pytest.approx(fp["intensity"][0]["p00_5"], abs=0.1)
        assert hi == pytest.approx(fp["intensity"][0]["p99_5"], abs=0.1)
        assert intensity["mean"] == pytest.approx(fp["intensity"][0]["mean"], abs=0.01)
        assert intensity["std"] == pytest.approx(fp["intensity"][0]["std"], abs=0.01)
    else:
        assert cfg["transforms"]["intensity"]["mode"] == "zscore"
    if kind == "vessel2d":
        assert cfg["transforms"]["label_values"] == [0.0, 255.0]
    # lung labels lungs and nodules: foreground crops shared by class, not by voxel count
    assert cfg["transforms"]["class_balanced"] is (len(fp["label_values"]) > 2)


def test_slower_device_gets_smaller_patch_and_fewer_steps_fit(fps):
    fp = fps["vessel2d"]
    fast = plan_config(fp, budget_minutes=5, measure=fake_measure)
    slow = plan_config(fp, budget_minutes=5, measure=lambda *a: fake_measure(*a, per_voxel=2e-4))
    vox = [math.prod(p["transforms"]["patch_size"].value) for p in (fast, slow)]
    assert vox[1] < vox[0]
    for p in (fast, slow):
        assert p["_meta"]["predicted_minutes"] <= 5.0
    longer = plan_config(fp, budget_minutes=20, measure=fake_measure)
    assert longer["_meta"]["total_iterations"] > fast["_meta"]["total_iterations"]


def test_thick_slices_plan_anisotropic_network_and_in_plane_rotation(tmp_path):
    fp = compute_fingerprint(write_nnunet(tmp_path / "nn", n=4), workers=0, progress=False)
    cfg = load_config(base=yaml.safe_load(render_plan(plan_config(fp, budget_minutes=5, measure=fake_measure))))
    assert cfg["network"]["strides"][0][2] == 1  # the 4 mm axis is not pooled at first
    assert cfg["network"]["kernel_sizes"][0] == [3, 3, 1]
    assert cfg["transforms"]["augment"]["rotate"]["degrees"] == [0.0, 0.0, 30.0]
    assert cfg["transforms"]["intensity"]["mode"] == "zscore"  # T2 / ADC: not CT
    assert cfg["network"]["in_channels"] == 2


def test_plans_are_deterministic(synth, tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "measure_step", fake_measure)
    texts = []
    for i in range(2):
        out = tmp_path / f"run{i}" / "plan.yaml"
        planner.write_plan(synth["lung"], out, budget_minutes=5, progress=False)
        assert (out.parent / "fingerprint.json").is_file()
        texts.append(out.read_text())
    assert texts[0] == texts[1]


@pytest.mark.parametrize("kind", ["vessel2d", "cell", "lung"])
def test_planned_config_trains_one_step(synth, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(planner, "measure_step", fake_measure)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "plan.yaml"
    assert cli.main(["plan", str(synth[kind]), "--budget-minutes", "2", "--output", str(out)]) == 0
    sets = ["train.epochs=1", "train.iterations_per_epoch=1", "train.num_workers=0"]  # any length is valid
    argv = ["train", "-c", str(out), "--output", str(tmp_path / "run"), "--set", "train.tensorboard=false"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["plan", str(tmp_path / "missing"), "--output", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "folder not found" in err
    assert cli.main(["plan", str(tmp_path), "--format", "bogus", "--output", str(tmp_path / "p.yaml")]) == 2
    assert "--format must be one of" in capsys.readouterr().err


def test_measure_step_times_and_measures_memory():
    spec = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8]}
    m = measure_step(spec, [32, 32], 2, "cpu", iters=1)
    assert 0 < m.step_s < 30 and 0 < m.window_s < 30
    assert m.peak_gb >= m.base_gb > 0
    assert m.threads in {t for t, _ in m.by_threads} and m.step_s == min(s for _, s in m.by_threads)


def test_measured_thread_count_is_planned(fps):
    def one_thread(*args):
        m = fake_measure(*args)
        return Measurement(m.step_s, m.window_s, m.peak_gb, m.base_gb, threads=1, by_threads=((1, 0.1), (2, 0.9)))

    plan = plan_config(fps["cell"], budget_minutes=5, measure=one_thread)
    assert plan["train"]["threads"].value == 1
    assert "1: 0.100 s, 2: 0.900 s" in plan["train"]["threads"].reason
    assert "threads" not in plan_config(fps["cell"], budget_minutes=5, measure=fake_measure)["train"]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "size"), [("lung", (37, 45, 17)), ("vessel3d", (29, 41, 23)), ("cell", 53)])
def test_plans_of_odd_shapes_train(tmp_path, monkeypatch, kind, size):
    """Odd, non-cubic shapes (a 17-slice lung): the plan's patch, strides and window fit
    and a planned config trains a step (any run length: one epoch of one step)."""
    monkeypatch.setattr(planner, "measure_step", fake_measure)
    monkeypatch.chdir(tmp_path)
    root = make_dataset(kind, tmp_path / "data", n=5, seed=2, size=size)
    out = tmp_path / "plan.yaml"
    assert cli.main(["plan", str(root), "--budget-minutes", "1", "--output", str(out)]) == 0
    cfg = load_config(out)
    assert all(p <= s for p, s in zip(cfg["transforms"]["patch_size"], cfg["infer"]["roi_size"], strict=True))
    argv = ["train", "-c", str(out), "--output", str(tmp_path / "run"), "--set", "train.tensorboard=false"]
    for s in ["train.epochs=1", "train.iterations_per_epoch=1", "train.num_workers=0"]:
        argv += ["--set", s]
    assert cli.main(argv) == 0


def test_topology_treats_a_float32_two_to_one_spacing_as_two():
    """3.5416667 / 7.083333 mm (float32 pixdim) is 2:1 as nnU-Net reads it: no pooling and kernel 1
    along the thick axis at the first level, whichever side of 2 the rounding falls."""
    for thick in (7.083333, 7.0833335, 7.083334):
        strides, kernels, _ = topology([3.5416667, 3.5416667, thick], [40, 40, 24])
        assert strides[0] == [2, 2, 1] and kernels[0] == [3, 3, 1], thick
    strides, kernels, _ = topology([3.5, 3.5, 6.9], [40, 40, 24])  # under 2:1: pooled from the start
    assert strides[0] == [2, 2, 2] and kernels[0] == [3, 3, 3]
