"""Expected failures of the command-line tools reach the user as one line on stderr (``error: ...``) and a
non-zero exit: a missing root, an undecodable image, a garbage checkpoint, a bad corruption or severity. Never
a traceback, never torch's advice to load with ``weights_only=False``. Every case stops before any training."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cubdata import generate_mini_cub, read_cub


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """``good``: a 2-class x 4-image CUB root; ``bad``: a copy whose first test image is not an image;
    ``junk``: a garbage .pt file; ``missing``: a path that does not exist."""
    base = tmp_path_factory.mktemp("cli-errors")
    good = base / "good"
    generate_mini_cub(good, n_classes=2, per_class=4)
    bad = base / "bad"
    shutil.copytree(good, bad)
    idx = read_cub(bad)
    idx.image_path(idx.split("test")[0]).write_bytes(b"junk")
    junk = base / "garbage.pt"
    junk.write_bytes(b"junk")
    return {"good": good, "bad": bad, "junk": junk, "missing": base / "no-such-folder", "base": base}


def _call(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse-style exits count too, as long as they say one line
        return exc.code if isinstance(exc.code, int) else 1


def _assert_one_error_line(rc, capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------- analysis.quality
@pytest.mark.parametrize("case", ["missing-pred", "missing-gt", "decode", "garbage-lpips-weights"])
def test_quality_cli(case, roots, tmp_path, capsys):
    from analysis import quality

    r = {k: str(v) for k, v in roots.items()}
    argv, needle = {
        "missing-pred": (["--set", r["missing"], "--cub-root", r["good"]], "no-such-folder"),
        "missing-gt": (["--set", r["good"], "--cub-root", r["missing"]], "no-such-folder"),
        "decode": (["--set", r["bad"], "--cub-root", r["good"]], "cannot decode"),
        "garbage-lpips-weights": (["--set", r["good"], "--cub-root", r["good"], "--metrics", "psnr,lpips",
                                   "--lpips-weights", r["junk"]], "garbage.pt"),
    }[case]
    rc = _call(quality.main, argv + ["--out", str(tmp_path / "q"), "--no-progress"])
    _assert_one_error_line(rc, capsys, needle)


# ------------------------------------------------------------------------------------------- corruptions.preview
@pytest.mark.parametrize("case", ["missing-image", "decode", "unknown-corruption", "severity"])
def test_preview_cli(case, roots, tmp_path, capsys):
    from corruptions import preview

    idx = read_cub(roots["bad"], check_images=False)
    junk_image = str(idx.image_path(idx.split("test")[0]))
    good_image = str(read_cub(roots["good"]).image_path(read_cub(roots["good"]).split("test")[0]))
    argv, needle = {
        "missing-image": ([str(roots["missing"] / "bird.jpg")], "bird.jpg"),
        "decode": ([junk_image], "cannot decode"),
        "unknown-corruption": ([good_image, "--corruptions", "fog,nope"], "nope"),
        "severity": ([good_image, "--severities", "1,7"], "7"),
    }[case]
    rc = _call(preview.main, argv + ["--out", str(tmp_path / "grid.png")])
    _assert_one_error_line(rc, capsys, needle)
    assert not (tmp_path / "grid.png").exists()


# ------------------------------------------------------------------------------------------- analysis.hspace
@pytest.mark.parametrize("case", ["missing-group", "decode", "garbage-prior"])
def test_hspace_cli(case, roots, tmp_path, capsys):
    from analysis import hspace

    r = {k: str(v) for k, v in roots.items()}
    argv, needle = {
        "missing-group": (["--prior", "random", "--set", f"clean={r['missing']}"], "no-such-folder"),
        "decode": (["--prior", "random", "--set", f"clean={r['bad']}"], "cannot decode"),
        "garbage-prior": (["--prior", r["junk"], "--set", f"clean={r['good']}"], "garbage.pt"),
    }[case]
    rc = _call(hspace.main, argv + ["--weights", "none", "--feature-size", "32", "--steps", "2",
                                    "--out", str(tmp_path / "h"), "--no-progress"])
    _assert_one_error_line(rc, capsys, needle)


# ------------------------------------------------------------------------------------------- restoration.train
@pytest.mark.parametrize("case", ["missing-root", "unknown-corruption", "severity", "garbage-prior", "garbage-init"])
def test_train_cli(case, roots, tmp_path, capsys):
    from restoration import train

    r = {k: str(v) for k, v in roots.items()}
    argv, needle = {
        "missing-root": (["--pairs", f"synthetic:fog:3:{r['missing']}"], "no-such-folder"),
        "unknown-corruption": (["--pairs", f"synthetic:nope:3:{r['good']}"], "nope"),
        "severity": (["--pairs", f"synthetic:fog:6:{r['good']}"], "6"),
        "garbage-prior": (["--pairs", f"synthetic:fog:3:{r['good']}", "--diffloss", "on", "--prior", r["junk"]],
                          "garbage.pt"),
        "garbage-init": (["--pairs", f"synthetic:fog:3:{r['good']}", "--init", r["junk"]], "garbage.pt"),
    }[case]
    out = tmp_path / "run"
    rc = _call(train.main, argv + ["--out", str(out), "--steps", "1", "--crop", "32", "--no-progress",
                                   "--no-plot"])
    _assert_one_error_line(rc, capsys, needle)
    assert not out.exists()


def test_garbage_classifier_weights_get_one_safe_line(tmp_path):
    import classifiers

    bad = tmp_path / "resnet50-garbage.pth"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError) as err:
        classifiers.build_backbone("resnet50", bad)
    msg = str(err.value)
    assert "resnet50-garbage.pth" in msg and "\n" not in msg and "weights_only=False" not in msg
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        classifiers.load_classifier(bad)


# ---------------------------------------------------------------------- --out of the wrong kind, argparse mistakes
def _forbid(monkeypatch, target: str) -> None:
    import importlib

    module, attr = target.rsplit(".", 1)

    def fail(*a, **k):
        raise AssertionError(f"{target} ran although --out is of the wrong kind")

    monkeypatch.setattr(importlib.import_module(module), attr, fail)


OUT_KIND_CASES = {
    # command: (module with main, extra argv, the out kind that is wrong, the work that must not start)
    "restoration.train": ("restoration.train", [], "file", "restoration.train.cli.train_restoration"),
    "diffloss.prior.train": ("diffloss.prior.train", ["--prior-config", "tiny"], "file",
                             "diffloss.prior.train.cli.train_prior"),
    "analysis.naturalness": ("analysis.naturalness", ["--quick"], "file", "analysis.naturalness.cli.run"),
    "analysis.quality": ("analysis.quality", ["--set", "{good}", "--cub-root", "{good}"], "file", "analysis.quality.cli.run"),
    "analysis.hspace": ("analysis.hspace", ["--quick"], "file", "analysis.hspace.cli.run"),
    "classifiers.finetune": ("classifiers.finetune", ["--arch", "vgg-mini", "--cub-root", "{good}"], "file",
                             "classifiers.finetune.cli.finetune"),
    "corruptions.preview": ("corruptions.preview", [], "folder", "corruptions.preview._main"),
}


@pytest.mark.parametrize("command", sorted(OUT_KIND_CASES))
def test_out_of_the_wrong_kind_is_refused_in_one_line_before_any_work(command, roots, tmp_path, capsys, monkeypatch):
    import importlib

    module, extra, wrong, work = OUT_KIND_CASES[command]
    _forbid(monkeypatch, work)
    out = tmp_path / "out"
    out.write_text("a file") if wrong == "file" else out.mkdir()
    argv = [a.format(good=roots["good"]) for a in extra] + ["--out", str(out)]
    rc = _call(importlib.import_module(module).main, argv)
    _assert_one_error_line(rc, capsys, str(out), "give a folder" if wrong == "file" else "give a file path")


@pytest.mark.parametrize("argv", [["--bogus"], ["--severities", "9"], ["--corruptions", "smog"]])
def test_command_line_mistakes_are_one_line(argv, tmp_path, capsys):
    from corruptions.degrade import main

    rc = _call(main, ["--cub-root", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    _assert_one_error_line(rc, capsys, "see python -m corruptions.degrade --help")
