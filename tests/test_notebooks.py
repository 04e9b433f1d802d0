"""The notebooks run headless in quick mode (papermill) and write their figures; they are committed without outputs."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("fig2_hspace.ipynb", "table2.ipynb")
KERNEL = "diffloss-test-python"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec that runs *this* interpreter (the venv's python), found through a private JUPYTER_PATH,
    and one torch thread in the kernel (2 threads thrash on a shared 2-core machine)."""
    pytest.importorskip("papermill")
    jp = tmp_path_factory.mktemp("jupyter-path")
    spec = jp / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "toolkit test kernel", "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(jp))
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


def _execute(name: str, out_nb: Path, cwd: Path, **parameters):
    import nbformat
    import papermill

    papermill.execute_notebook(str(ROOT / "notebooks" / name), str(out_nb), parameters=parameters,
                               kernel_name=KERNEL, cwd=str(cwd), progress_bar=False, log_output=False,
                               request_save_on_cell_execute=False)
    return nbformat.read(str(out_nb), as_version=4)


def _images_shown(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_and_parameter_cell(name):
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "mode = \"quick\"" in "".join(params[0]["source"])


def test_fig2_notebook_quick(tmp_path, kernel_env):
    out = tmp_path / "fig2"
    nb = _execute("fig2_hspace.ipynb", tmp_path / "fig2.ipynb", tmp_path, mode="quick", out=str(out),
                  images_per_group=2, steps=2, levels=2, feature_size=32, batch_images=2, restored=False)
    for stem in ("histograms", "histogram_overlay", "grid"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000, stem
    with open(out / "distances.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2 and {"level", "distance", "group", "image_id"} <= set(rows[0])
    assert _images_shown(nb) >= 3                               # grid, per-group histograms, overlay


def test_table2_notebook_quick(tmp_path, kernel_env):
    from analysis.classify import TABLE_COLUMNS

    table_dir = tmp_path / "table2"
    table_dir.mkdir()
    rows = []
    for clf in ("vgg16", "resnet50"):
        rows.append(["clean", "clean", clf, 60, 50, 83.33, 72.1, 90.9])
        for deg in ("fog", "rain", "lowlight"):
            for i, cfg in enumerate(("degraded", "w/o DiffLoss", "w/ DiffLoss")):
                rows.append([cfg, deg, clf, 60, 20 + 8 * i, 33.3 + 13.3 * i, 22.0 + 13 * i, 46.0 + 13 * i])
    with open(table_dir / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TABLE_COLUMNS)
        w.writerows(rows)
    nb = _execute("table2.ipynb", tmp_path / "table2.ipynb", tmp_path, mode="quick", table_dir=str(table_dir),
                  fig_dir=str(tmp_path / "figs"))
    for stem in ("table2_bars", "table2_bars_vgg16", "table2_bars_resnet50"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figs" / f"{stem}.{ext}").stat().st_size > 1000, stem
    assert _images_shown(nb) == 3
