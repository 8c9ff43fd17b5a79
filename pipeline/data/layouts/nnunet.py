"""nnU-Net v2 raw layout (``data.format: nnunet``)."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data._utils import data_files
from pipeline.data.layouts._common import Dataset, Problems, nonempty, read_json, require_dir
from pipeline.errors import DataError
from pipeline.registry import LAYOUTS
from transforms.keys import CASE, IMAGE, LABEL

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@LAYOUTS.register("nnunet")
def read_nnunet(root: str | Path) -> Dataset:
    """nnU-Net v2 raw: ``imagesTr/{case}_{XXXX}{ending}`` per channel, ``labelsTr/{case}{ending}``.

    ``dataset.json`` gives ``channel_names`` (how many channel files each case must have),
    ``labels`` (name → value) and ``file_ending``. A case with several channels gets a list of
    paths under ``image``, in channel order, which the loader stacks as channels.
    """
    root = Path(root)
    meta = read_json(root / "dataset.json")
    ending = meta.get("file_ending", ".nii.gz")
    names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(ending, str) or not isinstance(names, dict) or not names:
        raise DataError(f"{root / 'dataset.json'}: needs 'file_ending' (a string) and 'channel_names' (a mapping)")
    n_channels = len(names)
    for sub in ("imagesTr", "labelsTr"):
        require_dir(root / sub, sub)
    problems = Problems(root)
    cases: dict[str, dict[int, Path]] = {}
    misnamed = []
    for f in data_files(root / "imagesTr"):
        m = _CHANNEL.match(f.name[: -len(ending)]) if f.name.endswith(ending) else None
        if m is None:
            misnamed.append(f.name)
            continue
        cases.setdefault(m["case"], {})[int(m["channel"])] = f
    problems.add(f"images not named CASE_XXXX{ending}", misnamed)
    labels = {f.name[: -len(ending)]: f for f in data_files(root / "labelsTr") if f.name.endswith(ending)}
    problems.add(
        f"cases without all {n_channels} channel files",
        [c for c, ch in sorted(cases.items()) if sorted(ch) != list(range(n_channels))],
    )
    problems.add("images without a label", [f"{c}_0000{ending}" for c in sorted(cases) if c not in labels])
    problems.add("labels without an image", [f.name for c, f in sorted(labels.items()) if c not in cases])
    problems.raise_if_any()
    items = []
    for case, channels in cases.items():
        paths = [str(channels[i].resolve()) for i in range(n_channels)]
        items.append({IMAGE: paths[0] if n_channels == 1 else paths, LABEL: str(labels[case].resolve()), CASE: case})
    raw_labels = meta.get("labels")
    named = None
    if isinstance(raw_labels, dict) and all(isinstance(v, int) for v in raw_labels.values()):
        named = {int(v): str(k) for k, v in raw_labels.items()}
    chan = [str(names[k]) for k in sorted(names, key=lambda k: int(k) if str(k).isdigit() else str(k))]
    values = sorted(named) if named else None
    return Dataset(nonempty(items, root, "nnU-Net raw"), labels=named, channels=chan, label_values=values)
