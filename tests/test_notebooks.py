"""The notebooks run headless in quick mode (papermill) and draw their figures; they are committed without outputs.

The test kernel records what every figure drew (`drawn_figures`: images, bars, histograms, legends), so the
tests check the figures' content, not the size of their files."""
from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from drawn_figures import (KERNEL_LAUNCHER, assert_grid_drawn, assert_histograms_drawn, assert_overlay_drawn)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("fig2_hspace.ipynb", "table2.ipynb")
KERNEL = "diffloss-test-python"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec that runs *this* interpreter (the venv's python), found through a private JUPYTER_PATH,
    with one torch thread (2 threads thrash on a shared 2-core machine) and the figure recorder of
    `drawn_figures` (each test names its JSON file in $DRAWN_FIGURES_JSON)."""
    pytest.importorskip("papermill")
    jp = tmp_path_factory.mktemp("jupyter-path")
    spec = jp / "kernels" / KERNEL
    spec.mkdir(parents=True)
    launcher = jp / "recording_kernel.py"
    launcher.write_text(KERNEL_LAUNCHER.format(tests_dir=str(Path(__file__).resolve().parent)))
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(launcher), "-f", "{connection_file}"],
        "display_name": "toolkit test kernel", "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(jp))
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


def _execute(name: str, out_nb: Path, cwd: Path, monkeypatch, **parameters) -> tuple[object, list[dict]]:
    """Run the notebook; returns it (executed) and the descriptions of the figures it drew, in drawing order."""
    import nbformat
    import papermill

    drawn = out_nb.with_suffix(".figures.json")
    monkeypatch.setenv("DRAWN_FIGURES_JSON", str(drawn))
    papermill.execute_notebook(str(ROOT / "notebooks" / name), str(out_nb), parameters=parameters,
                               kernel_name=KERNEL, cwd=str(cwd), progress_bar=False, log_output=False,
                               request_save_on_cell_execute=False)
    return nbformat.read(str(out_nb), as_version=4), json.loads(drawn.read_text()) if drawn.is_file() else []


def _images_shown(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_and_parameter_cell(name):
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "mode = \"quick\"" in "".join(params[0]["source"])


def _kind(fig: dict) -> str:
    axes = fig["axes"]
    if axes and all(len(ax["images"]) == 1 for ax in axes):
        return "grid"
    if axes and all(ax["bar_groups"] for ax in axes):
        return "histograms"
    if len(axes) == 1 and axes[0]["polygons"]:
        return "overlay"
    if len(axes) == 1 and axes[0]["xlabel"] == "perturbation level":
        return "flip_rates"
    return "pca" if axes and axes[0]["title"] == "train" else "other"


def test_fig2_notebook_quick(tmp_path, kernel_env, monkeypatch, tiny_ckpts):
    from analysis.hspace import load_grid

    out, probe_out = tmp_path / "fig2", tmp_path / "probe"
    nb, figures = _execute("fig2_hspace.ipynb", tmp_path / "fig2.ipynb", tmp_path, monkeypatch, mode="quick",
                           out=str(out), probe_out=str(probe_out), images_per_group=2, steps=2, levels=2,
                           batch_images=2, restored=False, classifier=str(tiny_ckpts["resnet-mini"]), probe_t=[100])
    with open(out / "distances.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2 and {"level", "distance", "group", "image_id", "label_flip"} <= set(rows[0])
    assert {r["label_flip"] for r in rows} <= {"0.0", "1.0"}    # the classifier judged every generation
    # each figure twice: saved by the study (PNG + PDF), then shown by the notebook; the probe's PCA once (saved)
    kinds = Counter(_kind(f) for f in figures)
    assert kinds == {"grid": 2, "histograms": 2, "overlay": 2, "flip_rates": 2, "pca": 1}, kinds
    per_group = {g: n // 2 for g, n in Counter(r["group"] for r in rows).items()}    # images: rows / levels
    assert per_group == {"clean": 2, "degraded": 2}
    grid = load_grid(out)                                       # the generations saved as PNG
    assert [len(v) for v in grid.values()] == [2, 2]
    for fig in figures:
        if _kind(fig) == "grid":                                # the saved generations, pixel for pixel
            assert_grid_drawn(fig, grid, levels=2)
        elif _kind(fig) == "histograms":
            assert_histograms_drawn(fig, per_group, levels=2)
        elif _kind(fig) == "overlay":
            assert_overlay_drawn(fig, per_group)
        elif _kind(fig) == "pca":                               # one panel per group: train, clean, degraded
            assert [ax["title"] for ax in fig["axes"]] == ["train", "clean", "degraded"]
    for stem in ("histograms", "histogram_overlay", "grid", "flip_rates"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").is_file(), stem
    with open(probe_out / "probe.csv") as fh:
        probe = list(csv.DictReader(fh))
    assert [(r["t"], r["features"], r["group"]) for r in probe] == [("100", "h", "clean"), ("100", "h", "degraded"),
                                                                    ("100", "x_t pixels", "clean"),
                                                                    ("100", "x_t pixels", "degraded")]
    shown = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
    assert "| h | clean |" in shown                             # the probe's table
    assert _images_shown(nb) == 5                               # grid, flip rates, histograms, overlay, PCA


def test_table2_notebook_quick(tmp_path, kernel_env, monkeypatch):
    from analysis.classify import TABLE_COLUMNS

    table_dir = tmp_path / "table2"
    table_dir.mkdir()
    configs, degradations, classifiers = ("degraded", "w/o DiffLoss", "w/ DiffLoss"), ("fog", "rain", "lowlight"), \
        ("vgg16", "resnet50")
    top1 = {(cfg, deg, clf): 30.0 + 15 * i + 3 * j + k for i, cfg in enumerate(configs)
            for j, deg in enumerate(degradations) for k, clf in enumerate(classifiers)}
    rows = []
    for clf in classifiers:
        rows.append(["clean", "clean", clf, 60, 50, 83.33, 72.1, 90.9])
        rows += [[cfg, deg, clf, 60, 20, top1[cfg, deg, clf], top1[cfg, deg, clf] - 9, top1[cfg, deg, clf] + 9]
                 for deg in degradations for cfg in configs]
    with open(table_dir / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TABLE_COLUMNS)
        w.writerows(rows)
    nb, figures = _execute("table2.ipynb", tmp_path / "table2.ipynb", tmp_path, monkeypatch, mode="quick",
                           table_dir=str(table_dir), fig_dir=str(tmp_path / "figs"))
    # all classifiers (clusters classifier-major), then one figure per classifier; each saved and shown
    want = [[(clf, deg) for clf in classifiers for deg in degradations]] + [[(clf, deg) for deg in degradations]
                                                                              for clf in classifiers]
    assert len(figures) == len(want)
    for fig, clusters in zip(figures, want):
        (ax,) = fig["axes"]
        assert [b["label"] for b in ax["bar_groups"]] == list(configs)
        for bars, cfg in zip(ax["bar_groups"], configs):
            assert bars["heights"] == pytest.approx([top1[cfg, deg, clf] for clf, deg in clusters])
        assert set(configs) <= set(ax["legend"]) and any("clean" in t for t in ax["legend"])
    for stem in ("table2_bars", "table2_bars_vgg16", "table2_bars_resnet50"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figs" / f"{stem}.{ext}").is_file(), stem
    assert _images_shown(nb) == 3
