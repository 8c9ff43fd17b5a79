"""One reading of every file in every command: palettes, label values per dataset, both evaluation
routes, and files that used to be skipped without a word."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synthetic import data_cfg, tiny_config, write_config
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config, resolve
from pipeline.data import read_dataset
from pipeline.data.check import check_dataset
from pipeline.data.labels import dataset_label_values, fill_label_values
from pipeline.data.loaders import build_chain
from pipeline.data.schema import data_schema
from pipeline.data.synth import make_dataset
from pipeline.data.synth.vessel2d import fundus
from pipeline.engines import factory
from pipeline.engines import predictor as predictor_module
from pipeline.engines.checkpoint import save_checkpoint
from pipeline.engines.evaluator import Evaluator, evaluate_folder
from pipeline.engines.predictor import evaluate_split, find_inputs, run_inference
from pipeline.errors import DataError
from pipeline.io import read_label
from pipeline.metrics import METRICS
from pipeline.registry import LAYOUTS

NET2D = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}


def _grey(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _folders(tmp_path, labels: dict[str, np.ndarray], label_suffix=".png", save=_grey):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for case, label in labels.items():
        _grey(root / "images" / f"{case}.png", np.asarray(label, np.float64) * 0.5 + 20)
        save(root / "labels" / f"{case}{label_suffix}", label)
    return root


def _check_config(root, network=NET2D, **transforms):
    return resolve({"data": {"format": "folders", "root": str(root), "val_fraction": 0.0},
                    "network": {"name": "unet", **network}, "transforms": transforms})  # fmt: skip


# ------------------------------------------------------------------------------------- palettes


def _voc(path, indices):
    img = Image.fromarray(np.asarray(indices, np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))  # VOC colours: black, dark red, green
    img.save(path)


def test_colour_palette_png_reads_the_same_in_check_data_train_and_evaluate(tmp_path):
    masks = {}
    for i in range(3):
        m = np.zeros((9, 12), np.uint8)
        m[i : i + 4, 2:7] = 1
        masks[f"case{i}"] = m
    root = _folders(tmp_path, masks, save=_voc)
    config = _check_config(root)
    count, problems = check_dataset(config)
    assert (count, problems) == (3, [])  # refused before: "label has 3 different channels"
    config = fill_label_values(config)
    assert config["transforms"]["label_values"] == [0.0, 1.0]  # the palette indices
    chain = build_chain(config, "val")
    for case, m in masks.items():
        trained = chain({"image": str(root / "images" / f"{case}.png"), "label": str(root / "labels" / f"{case}.png")})
        evaluated = read_label(root / "labels" / f"{case}.png").array
        np.testing.assert_array_equal(trained["label"][0].numpy(), evaluated)
        np.testing.assert_array_equal(evaluated, m.T)


# ------------------------------------------------------------------------------ values per dataset


def _three_class(rng_seed: int, with_128: bool = True) -> np.ndarray:
    label = np.zeros((10, 14), np.uint8)
    label[1:4, 2:9] = 255
    if with_128:
        label[6:9, 3 + rng_seed : 10] = 128
    return label


def test_0_128_255_labels_are_mapped_per_dataset_without_a_phantom_class(tmp_path):
    labels = {f"case{i}": _three_class(i) for i in range(3)}
    root = _folders(tmp_path, labels)
    (tmp_path / "pred").mkdir()
    for case, label in labels.items():
        pred = label.copy()
        if case == "case1":
            pred[pred == 128] = 0  # this prediction lacks class 128 entirely
        _grey(tmp_path / "pred" / f"{case}.png", pred)
    ev = evaluate_folder(tmp_path / "pred", root / "labels", tmp_path / "out")
    assert ev.classes == (1, 2)  # 128 and 255; no phantom class 1 from a per-file 0/255 rule
    rows = {(r["case"], r["class"]): r for r in ev.rows()}
    assert rows["case1", 2]["status"] == "ok" and rows["case1", 2]["dice"] == 1.0  # 255 found, not "missed"
    assert rows["case1", 1]["status"] == "missed"
    assert all(r["status"] != "hallucinated" for r in rows.values())
    _grey(tmp_path / "pred" / "case2.png", np.where(labels["case2"] == 128, 1, labels["case2"]))
    with pytest.raises(DataError, match=r"case2\.png: values 1 are not among the label values \(0, 128, 255\)"):
        evaluate_folder(tmp_path / "pred", root / "labels", tmp_path / "out2")

    # training decides the same table from all label files together, and maps a file without 128 with it
    only_0_255 = labels["case1"].copy()
    only_0_255[only_0_255 == 128] = 0
    _grey(root / "labels" / "case1.png", only_0_255)
    assert dataset_label_values(read_dataset(data_cfg({"format": "folders", "root": str(root)})).items) == [0, 128, 255]
    config = fill_label_values(_check_config(root, {**NET2D, "out_channels": 3}))
    assert config["transforms"]["label_values"] == [0.0, 128.0, 255.0]
    d = build_chain(config, "val")(
        {"image": str(root / "images" / "case1.png"), "label": str(root / "labels" / "case1.png")}
    )
    assert set(np.unique(d["label"].numpy())) == {0.0, 2.0}  # 255 is class 2 here too
    assert check_dataset(_check_config(root, {**NET2D, "out_channels": 3})) == (3, [])
    with pytest.raises(DataError, match=r"hold 3 distinct values \(0, 128, 255\) but the network has 2 classes"):
        fill_label_values(_check_config(root))


def test_declared_class_indices_fit_any_number_of_classes(tmp_path):
    root = make_dataset("lung", tmp_path / "lung", n=2, seed=0, size=(16, 16, 16), nodules=False)
    network = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    config = resolve({"data": {"format": "msd", "root": str(root)}, "network": network})
    assert read_dataset(config["data"]).label_values == [0, 1, 2]  # dataset.json names a nodule class
    assert fill_label_values(config)["transforms"]["label_values"] == [0.0, 1.0]  # lungs only: 2 classes


# ----------------------------------------------------------------------- both evaluation routes


@pytest.fixture
def vessel_folders(tmp_path):
    """Non-square DRIVE-like cases (64 rows x 48 columns): grey image, 0/255 vessel GIF."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        rgb, vessels, fov = fundus(np.random.default_rng(i), 64)
        green = np.where(fov > 0, rgb[..., 1], np.median(rgb[..., 1][fov > 0]))  # no dark rim outside the FOV
        _grey(root / "images" / f"case{i}.png", green[:, 8:56])
        _grey(root / "labels" / f"case{i}.gif", vessels[:, 8:56])
    return root


def _fake_predict(network, image, **kwargs):
    """A deterministic, imperfect 'segmentation': dark (vessel) pixels of the normalised image."""
    p1 = torch.sigmoid(-3.0 * (image[:, :1].float() + 0.6))
    return torch.cat([1 - p1, p1], dim=1)


def test_both_evaluation_routes_give_identical_numbers(tmp_path, vessel_folders, monkeypatch):
    monkeypatch.setattr(predictor_module, "predict", _fake_predict)
    config = load_config(
        None,
        base=tiny_config(
            vessel_folders, tmp_path / "run", data={"val_fraction": 0.0}, transforms={"label_values": None}
        ),
    )
    config = fill_label_values(config)  # what training saves: the dataset's 0/255 table
    network = factory.build_network(config)
    checkpoint = save_checkpoint({"config": config, "network": network.state_dict()}, tmp_path / "model.pt")

    # evaluate --checkpoint: labels through the training loader, predictions in memory
    by_checkpoint = evaluate_split(checkpoint, tmp_path / "a", split="train", progress=False)
    # infer, then evaluate --pred/--label: both read back from files
    run_inference(checkpoint, vessel_folders / "images", tmp_path / "pred", progress=False)
    by_folder = evaluate_folder(tmp_path / "pred", vessel_folders / "labels", tmp_path / "b")

    rows_a, rows_b = by_checkpoint.rows(), by_folder.rows()
    assert [(r["case"], r["class"]) for r in rows_a] == [("case0", 1), ("case1", 1)]
    assert rows_a == rows_b  # every metric, bit for bit
    assert set(METRICS) <= set(rows_a[0])
    assert 0.2 < rows_a[0]["dice"] < 0.95  # a real, imperfect prediction

    # the check has teeth: one route holding the 2D arrays transposed changes the numbers
    pred = (read_label(tmp_path / "pred" / "case0.png").array > 0).astype(np.uint8)  # written as 0/255
    label = (read_label(vessel_folders / "labels" / "case0.gif").array > 0).astype(np.uint8)
    straight = Evaluator([1]).add("x", pred, label)[1]
    transposed = Evaluator([1]).add("x", pred.T, label.T)[1]
    assert all(straight[m] == rows_a[0][m] for m in METRICS)  # the routes' numbers
    assert any(straight[m] != transposed[m] for m in METRICS), (straight, transposed)


# -------------------------------------------------------------------------- reported, not skipped


def test_dangling_symlink_in_a_folder_dataset_is_reported(tmp_path, capsys):
    root = _folders(tmp_path, {f"case{i}": np.zeros((8, 8)) for i in range(3)})
    (root / "labels" / "case3.png").symlink_to(tmp_path / "moved-away.png")
    _grey(root / "images" / "case3.png", np.zeros((8, 8)))
    config = write_config(tmp_path / "c.yaml", tiny_config(root, tmp_path / "run"))
    assert main(["check-data", "-c", config]) == 2
    err = capsys.readouterr().err
    assert "labels: 1 dangling symbolic link(s): case3.png" in err


def test_multi_page_tiff_in_a_dataset_is_reported(tmp_path, capsys):
    root = _folders(tmp_path, {f"case{i}": np.zeros((8, 8)) for i in range(3)})
    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 20)]
    (root / "images" / "case1.png").unlink()
    pages[0].save(root / "images" / "case1.tif", save_all=True, append_images=pages[1:])
    config = write_config(tmp_path / "c.yaml", tiny_config(root, tmp_path / "run"))
    assert main(["check-data", "-c", config]) == 2
    out = capsys.readouterr().out
    assert "case1.tif: 2 pages (a multi-page TIFF); expected one 2D image" in out


def test_unsupported_files_in_an_infer_folder_are_named(tmp_path):
    (tmp_path / "in").mkdir()
    _grey(tmp_path / "in" / "a.png", np.zeros((4, 4)))
    (tmp_path / "in" / "scan.mnc").write_bytes(b"MHA")
    with pytest.warns(UserWarning, match=r"skipping 1 file\(s\) of a type this tool does not read .*: scan\.mnc"):
        assert [p.name for p in find_inputs(tmp_path / "in")] == ["a.png"]
    (tmp_path / "in" / "a.png").unlink()
    with pytest.raises(DataError, match=r"in: no images found .*; found only scan\.mnc"):
        find_inputs(tmp_path / "in")
    (tmp_path / "in" / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match=r"in: 1 dangling symbolic link\(s\): b\.png"):
        find_inputs(tmp_path / "in")


# ------------------------------------------------------------------------------------ layouts


def test_layouts_are_a_registry_that_the_schema_offers(tmp_path, monkeypatch):
    import pkgutil

    import pipeline.data.layouts as layouts

    # a layout is one module of pipeline.data.layouts, imported by the package: it registers itself
    modules = {m.name for m in pkgutil.iter_modules(layouts.__path__) if not m.name.startswith("_")}
    assert modules == {"folders", "msd", "nnunet", "drive", "dsb2018"} <= set(LAYOUTS.names())
    monkeypatch.setattr(LAYOUTS, "_items", dict(LAYOUTS._items))  # register for this test only
    from pipeline.data.layouts import Dataset

    @LAYOUTS.register("one_file")
    def read_one_file(root):
        return Dataset([{"image": f"{root}/x.png", "label": f"{root}/x.png", "case": "x"}], label_values=[0, 1])

    assert data_schema().validate({"format": "one_file", "root": str(tmp_path)}, "data")["format"] == "one_file"
    assert read_dataset(data_cfg({"format": "one_file", "root": str(tmp_path)})).items[0]["case"] == "x"
    with pytest.raises(ValueError, match=r"unknown dataset layout 'nope'"):
        LAYOUTS.get("nope")
