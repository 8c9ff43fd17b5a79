"""``report.html``: one self-contained page per training run or evaluation (``medseg report DIR``).

Everything is inside the one file: pictures as base64 PNG ``data:`` URIs, the CSS and the few
lines of JavaScript inline, nothing fetched from a network or a CDN, so it opens from an e-mail
attachment or an air-gapped cluster. It holds:

- the summary per class and the per-case metrics table (``per_case.csv``), sortable by any
  column (click a header; again for the other order);
- the training curves (``curves.png``, drawn from ``log.csv`` when it is missing) and the
  per-epoch log, sortable too;
- for each case (up to :data:`MAX_CASES`) the image, the truth and the prediction with true
  positives / false positives / misses (:mod:`pipeline.engines.views`), per-image Dice, and for
  volumes a slider over up to :data:`MAX_SLICES` axial slices of the structure (shrunk to
  :data:`PANEL_SIDE` pixels a panel, so the file stays small). ``report.html#slice=K`` opens every
  slider at its K-th slice, ``#sort=COLUMN`` sorts the tables by that column (as a click does).

Which folder is which comes from the files in it: a training run holds ``log.csv`` or
``checkpoints/``; an evaluation ``per_case.csv`` and ``summary.json``, and ``cases.json`` (the
image, label and prediction file of each case, written by ``medseg evaluate``) when it can show
pictures; a demo folder holds both as ``run/`` and ``test/``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, MedsegError
from pipeline.io import atomic_write_text

__all__ = ["build_report", "write_html_report", "write_case_index", "MAX_CASES", "MAX_SLICES", "PANEL_SIDE"]

MAX_CASES = 8
MAX_SLICES = 32
PANEL_SIDE = 160  # pixels of a volume slice's panel
FLAT_SIDE = 400  # of a 2D case's (one picture, not a stack; thin structures such as vessels need them)
CASES_JSON = "cases.json"


def write_case_index(
    output_dir: str | os.PathLike, cases: Sequence[Mapping[str, Any]], label_values: Sequence[float] | None = None
) -> Path:
    """Write ``cases.json``: for each case its ``case`` id and ``image`` / ``label`` /
    ``prediction`` files (absolute; ``image`` may be None, ``label`` a list of masks), and the
    raw label value of each class, so :func:`build_report` can draw the cases later."""

    def absolute(p: Any) -> Any:
        if p is None:
            return None
        if isinstance(p, (list, tuple)):
            return [absolute(q) for q in p]
        return str(Path(p).resolve())

    entries = [{k: absolute(v) if k != "case" else str(v) for k, v in c.items()} for c in cases]
    values = None if label_values is None else [float(v) for v in label_values]
    text = json.dumps({"label_values": values, "cases": entries}, indent=1) + "\n"
    return atomic_write_text(Path(output_dir) / CASES_JSON, text)


def _kind(folder: Path) -> tuple[Path | None, Path | None]:
    """``(run folder, evaluation folder)`` found in ``folder``; both None when it is neither."""

    def is_run(p: Path) -> bool:
        return (p / "log.csv").is_file() or (p / "checkpoints").is_dir()

    def is_eval(p: Path) -> bool:
        return (p / "per_case.csv").is_file() and (p / "summary.json").is_file()

    if is_run(folder) or is_eval(folder):
        return (folder if is_run(folder) else None), (folder if is_eval(folder) else None)
    run = folder / "run" if is_run(folder / "run") else None  # a demo folder
    evaluation = folder / "test" if is_eval(folder / "test") else None
    return run, evaluation


def build_report(folder: str | os.PathLike) -> Path:
    """(Re)write ``folder/report.html`` for a training run, an evaluation or a demo folder.

    Raises:
        MedsegError: ``folder`` is missing or holds neither a run nor an evaluation.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MedsegError(f"{folder}: no such folder")
    run, evaluation = _kind(folder)
    if run is None and evaluation is None:
        raise MedsegError(
            f"{folder}: neither a training run folder (log.csv or checkpoints/) nor an evaluation folder "
            "(per_case.csv and summary.json); nothing to report"
        )
    return write_html_report(folder / "report.html", run_dir=run, eval_dir=evaluation, title=f"medseg: {folder.name}")


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _table(rows: Sequence[Mapping[str, Any]], table_id: str, digits: int = 4) -> str:
    """A sortable HTML table (the page's script sorts by the clicked header's column)."""
    if not rows:
        return "<p>(empty)</p>"
    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    head = "".join(f'<th title="click to sort">{html.escape(str(c))}</th>' for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            value = r.get(c, "")
            num = _number(value) if isinstance(value, str) else value if isinstance(value, (int, float)) else None
            shown = f"{num:.{digits}g}" if num is not None and not float(num).is_integer() else str(value)
            key = f' data-v="{num!r}"' if num is not None and np.isfinite(num) else ""
            cells.append(f"<td{key}>{html.escape(shown)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _summary_table(summary: Mapping[str, Any]) -> str:
    metrics = summary.get("metrics", [])
    rows = []
    for cls, stats in summary.get("per_class", {}).items():
        row: dict[str, Any] = {"class": cls, "cases": stats.get("n_cases")}
        for m in metrics:
            row[m] = f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}"
        rows.append(row)
    return _table(rows, "summary")


def _curves(run: Path) -> str:
    from pipeline.engines import report

    png = run / "curves.png"
    if png.is_file():
        return f'<img class="curves" alt="training curves" src="{_png_uri(png.read_bytes())}">'
    if not (run / "log.csv").is_file():
        return "<p>no curves yet (log.csv is written after the first epoch)</p>"
    history = [{k: _number(v) for k, v in r.items() if _number(v) is not None} for r in _read_csv(run / "log.csv")]
    fig = report.curves_figure(history, _val_metric(run))
    if fig is None:
        return "<p>no curves: matplotlib is not installed</p>"
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return f'<img class="curves" alt="training curves" src="{_png_uri(buf.getvalue())}">'


def _val_metric(run: Path) -> str:
    rows = _read_csv(run / "log.csv") if (run / "log.csv").is_file() else []
    for key in rows[0] if rows else ():
        if key.startswith("val_") and not key[4:].rpartition("_")[2].isdigit():
            return key[4:]
    return "dice"


def _slice_indices(view) -> tuple[list[int], int]:
    """Up to :data:`MAX_SLICES` axial slices over the structure (truth or prediction; the whole
    volume when both are empty), and the position of the one through the largest error."""
    from pipeline.engines.views import focus_point

    depth = view.shape[2]
    masks = [a for a in (view.truth, view.pred) if a is not None]
    occupied = np.flatnonzero(np.any([np.any(a > 0, axis=(0, 1)) for a in masks], axis=0)) if masks else []
    lo, hi = (int(occupied[0]), int(occupied[-1])) if len(occupied) else (0, depth - 1)
    chosen = sorted({int(round(v)) for v in np.linspace(lo, hi, min(MAX_SLICES, hi - lo + 1))})
    focus = focus_point(view)[2]
    return chosen, int(np.argmin([abs(z - focus) for z in chosen]))


def _triptych(view, axis: int, index: int, side: int = PANEL_SIDE) -> bytes:
    from pipeline.engines.views import compose, planes, png_bytes

    cut = planes(view, axis, index)
    shape = next(a.shape for a in cut.values() if a is not None)
    panels = [
        compose(cut["grey"], None, "image", shape),
        compose(cut["grey"], cut["truth"], "truth", shape),
        compose(cut["grey"], cut["errors"], "errors", shape),
    ]
    scale = min(1.0, side / max(shape))
    gap = np.full((shape[0], max(1, round(max(shape) / 40)), 3), 255, np.uint8)  # about 1/40 of a panel
    joined = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    return png_bytes(joined, max_side=round(max(joined.shape[:2]) * scale))


def _case_block(entry: Mapping[str, Any], label_values: Sequence[float] | None) -> str:
    from pipeline.engines.views import dice_text, load_case_view

    case = str(entry.get("case"))
    try:
        view = load_case_view(
            case, entry.get("image"), entry.get("label"), entry.get("prediction"), label_values, entry.get("fov")
        )
    except (DataError, OSError, ValueError) as err:  # a report never fails the evaluation it reports
        return f'<div class="case"><h3>{html.escape(case)}</h3><p>cannot be shown: {html.escape(str(err))}</p></div>'
    title = f"<h3>{html.escape(case)}: {html.escape(dice_text(view))}</h3>"
    names = '<div class="names"><span>image</span><span>truth</span><span>prediction</span></div>'
    if len(view.shape) == 2:
        img = f'<img class="slice" alt="{html.escape(case)}" src="{_png_uri(_triptych(view, 0, 0, FLAT_SIDE))}">'
        return f'<div class="case flat">{title}{names}{img}</div>'
    chosen, start = _slice_indices(view)
    uris = [_png_uri(_triptych(view, 2, z)) for z in chosen]
    data = html.escape(json.dumps({"z": chosen, "src": uris}))
    return (
        f'<div class="case volume" data-slices="{data}">{title}{names}'
        f'<img class="slice" alt="{html.escape(case)}" src="{uris[start]}" data-slice="{chosen[start]}">'
        f'<div><input type="range" class="slider" min="0" max="{len(chosen) - 1}" value="{start}" '
        f'aria-label="slice of {html.escape(case)}"> <span class="where">axial slice {chosen[start]} '
        f"({start + 1} of {len(chosen)} shown)</span></div></div>"
    )


def _legend() -> str:
    from pipeline.engines.views import COLOURS

    return "".join(
        f'<span class="key"><span class="swatch" style="background:rgb{c}"></span>{html.escape(n)}</span>'
        for n, c in COLOURS.items()
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1b1b;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:12px 0 4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f1f1f1;cursor:pointer;user-select:none}th:first-child,td:first-child{text-align:left}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
img.curves{max-width:100%}img.slice{image-rendering:pixelated;width:100%;display:block}
.case{display:inline-block;vertical-align:top;margin:0 24px 18px 0;width:min(100%,560px)}
.case.flat{width:min(100%,1150px)}
.names{display:flex;justify-content:space-around;font-size:12px;color:#555}
.key{margin-right:14px;font-size:13px}.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;
vertical-align:middle;border:1px solid #888}.slider{width:100%}.where{font-size:12px;color:#555}
.scroll{max-height:420px;overflow:auto;display:inline-block}
"""

_JS = """
function sortBy(th){
  const table=th.closest('table'), body=table.tBodies[0], col=[...th.parentNode.children].indexOf(th);
  const asc=!th.classList.contains('asc');
  table.querySelectorAll('th').forEach(h=>h.classList.remove('asc','desc'));
  th.classList.add(asc?'asc':'desc');
  const key=r=>{const c=r.cells[col];return c.dataset.v!==undefined?parseFloat(c.dataset.v):c.textContent};
  const rows=[...body.rows].sort((a,b)=>{const x=key(a),y=key(b);
    const d=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y),undefined,{numeric:true});
    return asc?d:-d;});
  rows.forEach(r=>body.appendChild(r));
}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
const sortKey=(location.hash.match(/sort=([\\w-]+)/)||[])[1];
if(sortKey)document.querySelectorAll('table.sortable th').forEach(th=>{if(th.textContent===sortKey)sortBy(th);});
const wanted=(location.hash.match(/slice=(\\d+)/)||[])[1];
document.querySelectorAll('.case.volume').forEach(div=>{
  const data=JSON.parse(div.dataset.slices), img=div.querySelector('img.slice');
  const slider=div.querySelector('input.slider'), where=div.querySelector('.where');
  const show=i=>{img.src=data.src[i];img.dataset.slice=data.z[i];
    where.textContent='axial slice '+data.z[i]+' ('+(i+1)+' of '+data.z.length+' shown)';};
  slider.addEventListener('input',()=>show(+slider.value));
  if(wanted!==undefined){slider.value=Math.min(+wanted,data.z.length-1);show(+slider.value);}
});
"""


def write_html_report(
    path: str | os.PathLike, *, run_dir: Path | None = None, eval_dir: Path | None = None, title: str = "medseg report"
) -> Path:
    """Write the page for a run folder and/or an evaluation folder (see the module docstring)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(str(p.resolve()) for p in (run_dir, eval_dir) if p is not None)
    parts.append(f'<p class="where">written {stamp} from {html.escape(sources)}</p>')
    if eval_dir is not None:
        try:
            summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
        except ValueError as err:
            raise MedsegError(f"{eval_dir / 'summary.json'}: not valid JSON ({err})") from None
        parts.append(f"<h2>Evaluation: {summary.get('n_cases')} case(s)</h2>")
        parts.append("<p>Mean ± std per class (distances in mm).</p>" + _summary_table(summary))
        parts.append("<h3>Per case and class (click a header to sort)</h3>")
        parts.append('<div class="scroll">' + _table(_read_csv(eval_dir / "per_case.csv"), "per-case") + "</div>")
    if run_dir is not None:
        parts.append("<h2>Training</h2>" + _curves(run_dir))
        if (run_dir / "log.csv").is_file():
            parts.append("<h3>Per epoch (click a header to sort)</h3>")
            parts.append('<div class="scroll">' + _table(_read_csv(run_dir / "log.csv"), "log") + "</div>")
    index = eval_dir / CASES_JSON if eval_dir is not None else None
    if index is not None and index.is_file():
        cases = json.loads(index.read_text(encoding="utf-8"))
        entries = cases.get("cases", [])
        shown = entries[:MAX_CASES]
        more = f" (the first {len(shown)} of {len(entries)})" if len(entries) > len(shown) else ""
        parts.append(f"<h2>Image / truth / prediction{more}</h2><p>{_legend()}</p>")
        parts += [_case_block(e, cases.get("label_values")) for e in shown]
    elif eval_dir is not None:
        parts.append("<p>No pictures: this evaluation did not record its files (cases.json).</p>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + f"<script>{_JS}</script></body></html>\n"
    )
    return atomic_write_text(path, page)
