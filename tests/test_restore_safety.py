"""restoration.restore hardening: it never writes into a folder it did not create (unless --overwrite), the
restored root's images.txt names the files on disk, and resume re-checks every output's SHA-256."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import restoration.restore as restore_mod
from cubdata import generate_mini_cub, load_rgb, read_cub
from runkit.files import sha256_file
from restoration.nets import build_net
from restoration.restore import MANIFEST, main, restore_cub_root
from restoration.checkpoint import CKPT_FORMAT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_cub(tmp_path_factory) -> Path:
    """2 classes x 4 images: 4 test images (JPEG)."""
    root = tmp_path_factory.mktemp("cub") / "CUB_200_2011"
    generate_mini_cub(root, n_classes=2, per_class=4, seed=5)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A restoration checkpoint without training: a small UNet whose head is perturbed (so the output
    differs from the input), built with a private generator."""
    net = build_net("small-unet", base=4, depth=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.head.weight.copy_(0.05 * torch.randn(net.head.weight.shape, generator=g))
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    torch.save({"format": CKPT_FORMAT, "net": "small-unet", "net_kwargs": {"base": 4, "depth": 1},
                "state_dict": net.state_dict(), "step": 1}, path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_checkpoint_loading(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the checkpoint was loaded before the output folder was checked")

    monkeypatch.setattr(restore_mod, "load_checkpoint", fail)


# ------------------------------------------------------------------------------------------- foreign --out
def test_cli_refuses_an_existing_cub_root_as_out(ckpt, small_cub, tmp_path, capsys, monkeypatch):
    target = tmp_path / "someone-elses-cub"
    shutil.copytree(small_cub, target)
    before = snapshot(target)
    _no_checkpoint_loading(monkeypatch)
    rc = main(["--ckpt", str(ckpt), "--cub-root", str(small_cub), "--out", str(target), "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert str(target) in line and "empty folder" in line and "even with --overwrite" in line
    assert snapshot(target) == before  # nothing rewritten, nothing added (images.txt keeps its 8 rows)


def test_library_refuses_any_foreign_file_and_accepts_an_empty_folder(ckpt, small_cub, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with monkeypatch.context() as m:
        _no_checkpoint_loading(m)
        with pytest.raises(ValueError, match=r"not written by restoration\.restore.*--overwrite"):
            restore_cub_root(ckpt, small_cub, out, progress=False)
    assert snapshot(out) == {"notes.txt": b"mine\n"}
    empty = tmp_path / "empty"
    empty.mkdir()
    s = restore_cub_root(ckpt, small_cub, empty, progress=False)
    assert s["n_restored"] == 4
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        restore_cub_root(ckpt, small_cub, a_file, progress=False)


def test_overwrite_is_the_way_past(ckpt, small_cub, tmp_path):
    target = tmp_path / "folder-with-notes"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    s = restore_cub_root(ckpt, small_cub, target, overwrite=True, progress=False)
    assert s["n_restored"] == 4
    idx = read_cub(target)
    assert len(idx.records) == 4 and all(r.rel_path.endswith(".png") for r in idx.records)
    assert (target / "notes.txt").read_text() == "mine\n"  # a foreign file is left alone
    # the output now carries our manifest: an identical re-run resumes without --overwrite
    again = restore_cub_root(ckpt, small_cub, target, progress=False)
    assert again["n_restored"] == 0 and again["n_skipped"] == 4


def test_interrupted_run_resumes_without_overwrite(ckpt, small_cub, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = restore_mod.restore_array, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(restore_mod, "restore_array", flaky)
    with pytest.raises(KeyboardInterrupt):
        restore_cub_root(ckpt, small_cub, out, batch_size=1, progress=False)
    monkeypatch.setattr(restore_mod, "restore_array", real)
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    s = restore_cub_root(ckpt, small_cub, out, batch_size=1, progress=False)
    assert s["n_skipped"] == 1 and s["n_restored"] == 3


# ------------------------------------------------------------------------------------------- valid root
@pytest.mark.parametrize("fmt, suffix", [("png", ".png"), ("jpeg", ".jpg")])
def test_images_txt_names_the_files_written(ckpt, small_cub, tmp_path, fmt, suffix):
    out = tmp_path / "out"
    restore_cub_root(ckpt, small_cub, out, fmt=fmt, progress=False)
    listed = [line.split(maxsplit=1)[1] for line in (out / "images.txt").read_text().splitlines()]
    on_disk = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert sorted(listed) == on_disk and len(listed) == 4
    assert all(rel.endswith(suffix) for rel in listed)
    src = read_cub(small_cub)
    dst = read_cub(out)
    assert [Path(r.rel_path).with_suffix("").as_posix() for r in dst.records] == \
        [Path(r.rel_path).with_suffix("").as_posix() for r in src.split("test")]
    for rec in dst.records:  # the exact path, no extension guessing
        assert (out / "images" / rec.rel_path).is_file()


# ------------------------------------------------------------------------------------------- resume digests
def test_resume_redoes_an_output_damaged_after_the_fact(ckpt, small_cub, tmp_path):
    out = tmp_path / "out"
    restore_cub_root(ckpt, small_cub, out, progress=False)
    man = json.loads((out / MANIFEST).read_text())
    assert len(man["done"]) == 4
    for entry in man["done"].values():
        assert entry["sha256"] == sha256_file(out / "images" / entry["path"])
    good = snapshot(out / "images")
    victim = out / "images" / next(iter(man["done"].values()))["path"]
    victim.write_bytes(b"junk")
    s = restore_cub_root(ckpt, small_cub, out, progress=False)
    assert s["n_restored"] == 1 and s["n_skipped"] == 3
    assert snapshot(out / "images") == good
    assert load_rgb(victim).shape[2] == 3 and np.asarray(load_rgb(victim)).dtype == np.uint8


def test_a_manifest_of_another_format_is_ignored_and_everything_redone(ckpt, small_cub, tmp_path, caplog):
    out = tmp_path / "out"
    restore_cub_root(ckpt, small_cub, out, progress=False)
    man = json.loads((out / MANIFEST).read_text())
    assert man["format"] == restore_mod.MANIFEST_FORMAT
    assert set(man["settings"]) == {"ckpt_sha256", "in_root", "split", "fmt"} and man["net"] == "small-unet"
    # another layout (the settings at the top level, no format tag): not resumed, not mixed in
    (out / MANIFEST).write_text(json.dumps({**man["settings"], "net": man["net"], "complete": True, "done": man["done"]}))
    with caplog.at_level("WARNING", logger="runkit.manifest"):
        s = restore_cub_root(ckpt, small_cub, out, progress=False)
    assert "of another format" in caplog.text
    assert (s["n_restored"], s["n_skipped"]) == (4, 0)
    assert json.loads((out / MANIFEST).read_text())["format"] == restore_mod.MANIFEST_FORMAT


def test_output_rel_path_is_the_one_rule_of_cubdata():
    from cubdata.paths import output_rel_path

    assert restore_mod.output_rel_path is output_rel_path
    assert output_rel_path("001.Bird/a.jpg", "png") == "001.Bird/a.png"
    assert output_rel_path("001.Bird/a.JPEG", "jpeg") == "001.Bird/a.JPEG"  # already a JPEG name: kept
    assert output_rel_path("001.Bird/a.png", "jpeg") == "001.Bird/a.jpg"
    assert output_rel_path("001.Bird/a.b.webp", "png") == "001.Bird/a.b.png"
    with pytest.raises(ValueError, match="png"):
        output_rel_path("a.jpg", "gif")


def test_run_cli_turns_expected_errors_into_one_line(capsys, monkeypatch):
    from cubdata import ImageDecodeError
    from runkit.errors import error_kind, run_cli

    def fail(err):
        def run():
            raise err
        return run

    assert run_cli(fail(ValueError("bad\n  value"))) == 2
    assert capsys.readouterr().err == "error: bad value\n"
    assert run_cli(fail(ImageDecodeError("cannot decode x.jpg"))) == 2
    assert capsys.readouterr().err.startswith("error: cannot decode x.jpg; replace it")
    with pytest.raises(KeyError):  # unexpected errors keep their traceback
        run_cli(fail(KeyError("k")))
    reports = []
    assert run_cli(lambda: 7, report=reports.append) == 0 and reports == [7]
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 reports
    assert run_cli(lambda: 8, report=reports.append) == 0 and reports == [7]
    assert error_kind(ValueError()) == "ValueError" and error_kind(json.JSONDecodeError("m", "d", 0)) == "json.decoder.JSONDecodeError"
