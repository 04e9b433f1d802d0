"""benchmarks/full_scale.py: the small-scale CPU run goes through every section's code path and writes
results.json (every section, positive timings) and results.md (one table per section)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "full_scale.py"
ROW_KEYS = {
    "diffloss": {"batch", "dtype", "batch_branches", "variant", "images_per_s", "seconds", "peak_gib", "ratio"},
    "train": {"net", "batch", "crop", "dtype", "steps", "steps_per_s", "images_per_s", "peak_gib"},
    "hspace": {"images", "unet_evals_per_image", "s_per_image", "wall_s_per_image"},
    "classify": {"arch", "img_size", "images", "loop_images_per_s", "forward_images_per_s", "ratio", "peak_gib"},
    "prior": {"config", "parameters", "batch", "steps", "steps_per_s", "images_per_s", "peak_gib"},
}
POSITIVE = {"diffloss": ("images_per_s", "seconds", "ratio"), "train": ("steps_per_s", "images_per_s"),
            "hspace": ("s_per_image", "wall_s_per_image"),
            "classify": ("loop_images_per_s", "forward_images_per_s", "ratio"), "prior": ("steps_per_s", "images_per_s")}


@pytest.fixture(scope="module")
def full_scale():
    # benchmarks/ is not a package (nothing may import it): load the script by path; dataclasses need the
    # module registered in sys.modules while it executes
    name = "_full_scale_under_test"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def test_small_scale_cpu_run_writes_every_section(full_scale, tmp_path, capsys):
    out = tmp_path / "fs"
    assert full_scale.main(["--device", "cpu", "--prior-config", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["setup"]["scale"] == "small" and res["setup"]["device"] == "cpu"
    assert list(res["sections"]) == list(full_scale.SECTIONS)
    for name, sec in res["sections"].items():
        assert sec["status"] == "done", (name, sec.get("error"))
        assert sec["rows"], name
        for row in sec["rows"]:
            assert ROW_KEYS[name] <= set(row), (name, row)
            assert "error" not in row, row
            for key in POSITIVE[name]:
                assert row[key] > 0, (name, key, row)
            assert row["peak_gib"] is None if "peak_gib" in row else True  # CPU: no allocator statistics
    dl = res["sections"]["diffloss"]["rows"]
    steps = [r for r in dl if r["kind"] == "diffloss_step"]
    # every plain setting: 2 batches x 3 dtypes x batch_branches on/off, then the three speed options
    plain = {(r["batch"], r["dtype"], r["batch_branches"]) for r in steps if r["variant"] == "plain"}
    assert plain == {(b, d, bb) for b in (1, 2) for d in ("fp32", "bf16", "fp16") for bb in (True, False)}
    assert {r["variant"] for r in steps} == {"plain", "checkpointing", "channels_last", "compile (eager)"}
    assert all(r["grad_norm"] > 0 for r in steps)  # the criterion's gradient reached the restored images
    fwd = {(r["batch"], r["dtype"]): r["seconds"] for r in dl if r["kind"] == "unet_fwd"}
    for r in steps:  # the ratio is the call's time over the forward's at the same batch and dtype
        assert r["ratio"] == pytest.approx(r["seconds"] / fwd[(r["batch"], r["dtype"])], rel=2e-2, abs=2e-3)
    assert res["sections"]["train"]["rows"][0]["steps"] == 3
    assert res["sections"]["prior"]["rows"][0]["steps"] == 3
    assert res["sections"]["hspace"]["rows"][0]["images"] == 2
    assert res["sections"]["classify"]["rows"][0]["images"] == 16

    md = (out / "results.md").read_text()
    assert md.count("\n|---") == len(full_scale.SECTIONS)  # one table per section
    for name in full_scale.SECTIONS:
        assert f"## {name}:" in md
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # scratch runs live elsewhere
    for name in full_scale.SECTIONS:  # a progress line per section
        assert f"] {name}:" in printed


def test_refuses_a_used_out_folder_and_unknown_sections(full_scale, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("someone's file")
    assert full_scale.main(["--device", "cpu", "--prior-config", "tiny", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "someone's file"
    with pytest.raises(SystemExit):
        full_scale.main(["--sections", "diffloss,bogus", "--out", str(tmp_path / "new")])
    assert "valid: diffloss,train,hspace,classify,prior" in capsys.readouterr().err
