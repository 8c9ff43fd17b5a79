"""Transform chains from config: 2D and 3D, geometry kept aligned, val/infer modes, inversion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Invertd, SaveImage
from PIL import Image
from scipy import ndimage

from pipeline.config import resolve
from pipeline.data.loaders import chain_settings
from pipeline.errors import ConfigError, DataError
from pipeline.io import read_image
from transforms.chains import build_transforms


def build(cfg, mode, inputs=()):
    """The chain the pipeline builds for a (partial) config."""
    return build_transforms(chain_settings(resolve(cfg), inputs), mode, reader=read_image)


NET2D = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}
NET3D = {**NET2D, "spatial_dims": 3}
NO_INTENSITY_AUG = {"gamma": {"prob": 0.0}, "noise": {"prob": 0.0}, "contrast": {"prob": 0.0}}
ALL_SPATIAL = {
    "rotate": {"prob": 1.0, "degrees": [40.0]},
    "scale": {"prob": 1.0, "range": [0.8, 1.25]},
    "flip": {"prob": 0.5},
    "elastic": {"prob": 1.0},
    **NO_INTENSITY_AUG,
}


def _blobs(shape, seed, sigma=3.0) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return (field - field.min()) / (field.max() - field.min())


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture
def case2d(tmp_path):
    img = _blobs((48, 40), 0)
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(((img > 0.5) * 255).astype(np.uint8)).save(tmp_path / "lab.gif")
    return {"image": str(tmp_path / "img.png"), "label": str(tmp_path / "lab.gif"), "case": "c2d"}


@pytest.fixture
def case3d(tmp_path):
    img = _blobs((24, 20, 10), 1, sigma=2.0)
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])  # LPS-like, anisotropic: orientation and spacing both act
    nib.save(nib.Nifti1Image((img * 1000 - 500).astype(np.int16), affine), str(tmp_path / "v.nii.gz"))
    nib.save(nib.Nifti1Image((img > 0.5).astype(np.uint8), affine), str(tmp_path / "l.nii.gz"))
    return {"image": str(tmp_path / "v.nii.gz"), "label": str(tmp_path / "l.nii.gz"), "case": "c3d"}


def test_2d_train_crops_keep_image_label_and_dist_aligned(case2d):
    cfg = {
        "network": NET2D,
        "transforms": {
            "patch_size": [32, 32],
            "num_samples": 3,
            "intensity": {"mode": "none"},
            "augment": ALL_SPATIAL,
            "label_values": [0, 255],  # the dataset's table (no per-file 0/255 rule any more)
        },
    }
    chain = build(cfg, "train", inputs=("dist",))
    chain.set_random_state(0)
    dices, shuffled = [], []
    for _ in range(4):
        crops = chain(case2d)
        assert len(crops) == 3
        for c in crops:
            assert c["image"].shape == c["label"].shape == (1, 32, 32) and c["dist"].shape == (2, 32, 32)
            assert c["image"].dtype == torch.float32 and set(np.unique(c["label"])) <= {0.0, 1.0}
            img, lab, dist = c["image"][0].numpy(), c["label"][0].numpy() > 0, c["dist"][1].numpy()
            if lab.sum() > 20 and (~lab).sum() > 20:
                dices.append(_dice(img > 127.5, lab))
                assert np.array_equal(dist <= 0, lab), "dist is computed on the augmented crop's own label"
                shuffled.append(_dice(img.T > 127.5, lab))
    assert len(dices) >= 3
    assert min(dices) > 0.85, dices
    assert np.mean(shuffled) < 0.8  # a misaligned label would be caught


def test_3d_train_chain_resamples_reorients_and_stays_aligned(case3d):
    cfg = {
        "network": NET3D,
        "transforms": {
            "patch_size": [16, 16, 16],
            "spacing": [1.5, 1.5, 1.5],
            "num_samples": 2,
            "intensity": {"mode": "window", "window": [-500.0, 500.0]},
            "augment": {**ALL_SPATIAL, "elastic": {"prob": 0.0}},
        },
    }
    chain = build(cfg, "train")
    chain.set_random_state(1)
    crops = chain(case3d)
    assert len(crops) == 2
    for c in crops:
        assert c["image"].shape == (1, 16, 16, 16)
        assert float(c["image"].min()) >= 0.0 and float(c["image"].max()) <= 1.0
        lab = c["label"][0].numpy() > 0
        if 50 < lab.sum() < lab.size - 50:
            assert _dice(c["image"][0].numpy() > 0.5, lab) > 0.8


def test_val_is_deterministic_whole_image_with_label(case3d):
    cfg = {"network": NET3D, "transforms": {"spacing": [1.5, 1.5, 1.5]}}
    a, b = build(cfg, "val")(case3d), build(cfg, "val")(case3d)
    assert a["image"].shape == (1, 24, 20, 19)  # 10 slice centres 3 mm apart span 27 mm: 19 at 1.5 mm
    torch.testing.assert_close(a["image"], b["image"])
    assert abs(float(a["image"].mean())) < 1e-4 and abs(float(a["image"].std()) - 1) < 1e-2  # z-score
    np.testing.assert_allclose(np.diag(a["image"].affine.numpy())[:3], [1.5, 1.5, 1.5])  # RAS


def test_infer_2d_prediction_written_back_lies_over_the_input(case2d, tmp_path):
    cfg = {"network": NET2D, "transforms": {"intensity": {"mode": "none"}}}
    d = build(cfg, "infer")(case2d)
    assert set(d) == {"image", "label", "case"} and isinstance(d["label"], str)  # label not loaded
    pred = (d["image"] > 127.5).to(torch.uint8)  # "segment" by threshold, in the chain's geometry
    pred.meta = dict(d["image"].meta)
    SaveImage(output_dir=tmp_path / "out", output_ext=".png", output_postfix="pred", separate_folder=False,
              output_dtype=np.uint8, scale=255, print_log=False)(pred)  # fmt: skip
    written = np.asarray(Image.open(tmp_path / "out" / "img_pred.png"))
    expected = np.asarray(Image.open(case2d["label"]).convert("L"))
    assert written.shape == expected.shape == (48, 40)
    assert _dice(written > 0, expected > 0) > 0.98


def test_infer_3d_inverts_to_the_input_geometry(case3d, tmp_path):
    cfg = {"network": NET3D, "transforms": {"spacing": [1.0, 1.0, 1.0]}}
    chain = build(cfg, "infer")
    d = chain(case3d)
    assert d["image"].shape == (1, 36, 30, 28)  # 1 mm over the voxel-centre extent
    d["pred"] = (d["image"] > 0).float()  # z-score > 0 is the upper half of intensities
    d = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)(d)
    assert d["pred"].shape == (1, 24, 20, 10)
    SaveImage(output_dir=tmp_path, output_postfix="seg", separate_folder=False, output_dtype=np.uint8,
              print_log=False)(d["pred"])  # fmt: skip
    out = nib.load(str(tmp_path / "v_seg.nii.gz"))
    src = nib.load(case3d["image"])
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    original = src.get_fdata() > np.median(src.get_fdata())
    assert _dice(np.asarray(out.dataobj) > 0, original) > 0.9


def test_channel_selection_keeps_drive_green(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 1] = np.arange(12, dtype=np.uint8)[None] * 10
    Image.fromarray(rgb).save(tmp_path / "r.tif")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "m.gif")
    item = {"image": str(tmp_path / "r.tif"), "label": str(tmp_path / "m.gif"), "fov": str(tmp_path / "m.gif")}
    cfg = {"network": NET2D, "transforms": {"channels": [1], "intensity": {"mode": "none"}}}
    d = build(cfg, "val")(item)
    assert d["image"].shape == (1, 12, 10) and d["fov"].shape == (1, 12, 10)
    np.testing.assert_array_equal(d["image"][0, :, 0].numpy(), np.arange(12) * 10.0)


def test_bad_label_values_surface_as_data_error_not_runtime_error(case2d, tmp_path):
    bad = np.zeros((48, 40), np.uint8)
    bad[:10] = 128
    Image.fromarray(bad).save(tmp_path / "bad.png")
    cfg = {"network": NET2D, "transforms": {"label_values": [0, 255]}}
    with pytest.raises(DataError, match=r"bad.png: label values \{128\} are not the configured"):
        build(cfg, "val")({**case2d, "label": str(tmp_path / "bad.png")})


@pytest.mark.parametrize(
    ("transforms", "network", "match"),
    [
        (
            {"channels": [0, 1]},
            NET2D,
            r"transforms.channels: selects 2 channel\(s\) \[0, 1\] but network.in_channels is 1",
        ),
        ({"label_values": [0, 1, 2]}, NET2D, r"transforms.label_values: lists 3 values .* there are 2 classes"),
        ({"patch_size": [32, 32, 32]}, NET2D, r"transforms.patch_size: needs 2 values for spatial_dims=2"),
        (
            {"augment": {"rotat": {}}},
            NET2D,
            r"transforms.augment.rotat: unknown key \(did you mean 'transforms.augment.rotate'\?\)",
        ),
        ({"augment": {"flip": {"axes": [2]}}}, NET2D, r"transforms.augment.flip.axes: spatial axes are 0..1"),
        ({}, {"name": "unet"}, r"network.spatial_dims: missing required key for network 'unet'"),
    ],
)
def test_config_errors_name_the_key(transforms, network, match):
    with pytest.raises(ConfigError, match=match):
        build({"network": network, "transforms": transforms}, "train")


def test_settings_defaults_and_mode_check():
    s = chain_settings(resolve({"network": {**NET3D, "out_channels": 1}}))
    assert s.patch_size == (96, 96, 96) and s.num_classes == 2 and s.intensity["mode"] == "zscore"
    assert s.augment["flip"]["prob"] == 0.5 and s.augment["rotate"]["degrees"] == [30.0]
    with pytest.raises(ValueError, match=r"mode must be one of \('train', 'val', 'infer'\), got 'test'"):
        build({"network": NET2D}, "test")
    with pytest.raises(ConfigError, match="transforms.spacing: is for 3D data"):
        resolve({"network": NET2D, "transforms": {"spacing": [1.0, 1.0, 1.0]}})
    with pytest.raises(ValueError, match="unknown batch input 'nope'"):
        build({"network": NET2D}, "train", inputs=("nope",))


def _tracked(chain):
    """The same chain with MONAI's metadata kept through its random part (as before ``untracked_from``)."""
    clone = build_transforms.__globals__["Chain"](chain.transforms)
    clone.untracked_from = None
    return clone


@pytest.mark.parametrize("dims", [2, 3])
def test_train_random_part_runs_without_metadata_and_gives_the_same_arrays(case2d, case3d, dims):
    from monai.data import MetaTensor, get_track_meta

    net, case = (NET2D, case2d) if dims == 2 else (NET3D, case3d)
    cfg = {
        "network": net,
        "transforms": {
            "patch_size": [16] * dims,
            "num_samples": 2,
            "intensity": {"mode": "minmax"},
            "augment": {**ALL_SPATIAL, "elastic": {"prob": 0.0}},
            **({"label_values": [0, 255]} if dims == 2 else {}),
        },
    }
    chain = build(cfg, "train", inputs=("dist",))
    assert chain.untracked_from is not None
    tracked = _tracked(chain)
    for seed in range(3):
        chain.set_random_state(seed)
        fast = chain(case)
        tracked.set_random_state(seed)
        slow = tracked(case)
        assert get_track_meta(), "the flag is restored after the call"
        for a, b in zip(fast, slow, strict=True):
            assert set(a) == set(b) and "label_spacing" not in a
            for key in ("image", "label", "dist"):
                assert type(a[key]) is torch.Tensor and isinstance(b[key], MetaTensor), key
                assert torch.equal(a[key], b[key].as_tensor()), (seed, key)


def test_untracked_distance_maps_keep_the_voxel_spacing(case3d):
    """``transforms.spacing: null`` in 3D: distances in the file's spacing (1.5 x 1.5 x 3 mm here),
    recorded before the random part that runs without metadata."""
    cfg = {
        "network": NET3D,
        "transforms": {
            "patch_size": [16, 16, 8],
            "num_samples": 1,
            "intensity": {"mode": "none"},
            "augment": {"rotate": {"prob": 0.0}, "scale": {"prob": 0.0}, "flip": {"prob": 0.0}, **NO_INTENSITY_AUG},
        },
    }
    chain = build(cfg, "train", inputs=("dist",))
    chain.set_random_state(0)
    (crop,) = chain(case3d)
    lab = crop["label"][0].numpy() > 0
    assert 0 < lab.sum() < lab.size
    spacing = (1.5, 1.5, 3.0)
    outside = ndimage.distance_transform_edt(~lab, sampling=spacing)
    far = outside > 3.5  # away from the edge the signed map is the plain EDT of the background
    np.testing.assert_allclose(crop["dist"][1].numpy()[far], outside[far], rtol=0.2)


def test_ct_mode_clips_to_the_window_then_z_scores_with_the_dataset_statistics():
    """transforms.intensity.mode ct (what medseg plan writes for CT) is nnU-Net's CTNormalization."""
    from transforms.chains import _intensity, ct_normalisation

    hu = torch.tensor([[-2000.0, -1000.0, -600.0, -100.0, 3000.0]])
    args = ct_normalisation([-1000.0, -100.0], mean=-700.0, std=150.0)
    settings = type("S", (), {"intensity": {"mode": "ct", "window": [-1000.0, -100.0], "mean": -700.0, "std": 150.0}})
    (transform,) = _intensity(settings)
    out = transform({"image": hu})["image"]
    expected = (hu.clamp(-1000.0, -100.0) + 700.0) / 150.0
    torch.testing.assert_close(torch.as_tensor(out), expected)
    assert args["b_min"] == pytest.approx(-2.0) and args["b_max"] == pytest.approx(4.0) and args["clip"]


@pytest.mark.parametrize("balanced", [True, False])
def test_class_balanced_crops_find_a_rare_class(tmp_path, balanced):
    """A 3-class label with one large and one 3x3 class: class-balanced crops are centred on the
    rare class about a third of the time (1 : 1 : 1); by voxel count almost never."""
    label = np.zeros((96, 96), np.uint8)
    label[8:88, 8:60] = 1  # a large class
    label[80:83, 80:83] = 2  # a rare one, far from the large one
    Image.fromarray(label * 100).save(tmp_path / "lab.png")
    Image.fromarray((label * 80 + 20).astype(np.uint8)).save(tmp_path / "img.png")
    item = {"image": str(tmp_path / "img.png"), "label": str(tmp_path / "lab.png"), "case": "c"}
    cfg = {
        "network": {**NET2D, "out_channels": 3},
        "transforms": {
            "patch_size": [16, 16],
            "num_samples": 8,
            "label_values": [0, 100, 200],
            "pos_neg_ratio": 2.0,
            "class_balanced": balanced,
            "augment": {"rotate": {"prob": 0.0}, "scale": {"prob": 0.0}, "flip": {"prob": 0.0}, **NO_INTENSITY_AUG},
        },
    }
    chain = build(cfg, "train")
    chain.set_random_state(0)
    crops = [c for _ in range(25) for c in chain(item)]
    rare = np.mean([bool((np.asarray(c["label"]) == 2).any()) for c in crops])
    assert all(tuple(c["label"].shape[1:]) == (16, 16) for c in crops)
    if balanced:
        assert 0.25 < rare < 0.45, rare
    else:
        assert rare < 0.1, rare
