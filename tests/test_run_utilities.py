"""The run plumbing (runkit): registry, manifest, torch threads, options and CLI generation, --config replay,
run folders, output checks."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from runkit.checks import positive_int
from runkit.cli import ArgumentParser, check_out, parse_set
from runkit.options import Options, RunOptions, add_config_arguments, config_from_args, option
from runkit.rundir import RunDir
from runkit.manifest import Manifest
from runkit.registry import Registry, UnknownNameError, resolve_name
from runkit.runtime import torch_threads


def test_registry_registers_where_defined_and_reads_one_way():
    reg = Registry("widget", plugin=lambda spec, obj: obj)

    @reg.register("a")
    def make_a():
        return "A"

    reg.add("b", len)
    assert reg.names() == ("a", "b") and list(reg) == ["a", "b"] and dict(reg.items()) == {"a": make_a, "b": len}
    assert reg["a"] is make_a is reg.get("a") and reg.get("missing", None) is None
    assert reg["json:dumps"] is json.dumps is reg.get("json:dumps")  # a plug-in, resolved with pkgutil.resolve_name
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; valid names: a, b \(or 'pkg.module:attr'\)"):
        reg["c"]
    with pytest.raises(UnknownNameError, match="cannot import widget 'json:nope'.*registered names: a, b"):
        reg.get("json:nope")
    assert reg.get("json:nope", None) is None
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)
    assert reg.remove("b") is len and "b" not in reg and len(reg) == 1
    with pytest.raises(UnknownNameError, match="unknown widget 'b'"):
        reg.remove("b")
    with pytest.raises(ValueError, match="cannot import widget 'json:nope'"):
        resolve_name("json:nope", "widget")


def test_manifest_resumes_same_settings_only_and_verifies_digests(tmp_path):
    out = tmp_path / "img.bin"
    out.write_bytes(b"abc")
    m = Manifest.open(tmp_path / "m.json", "t/2", {"seed": 0, "note": "x"}, entries_key="done")
    assert not m.resumed and m.reason == "no manifest"
    m.record("1", {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"})  # sha256(b"abc")
    m.record("2", {"sha256": "0" * 64})
    m.save()
    again = Manifest.open(tmp_path / "m.json", "t/2", {"seed": 0, "note": "y"}, pinned=("seed",), entries_key="done")
    assert again.resumed and again.verified("1", out) and not again.verified("2", out) and not again.verified("3")
    other = Manifest.open(tmp_path / "m.json", "t/2", {"seed": 1}, entries_key="done")
    assert not other.resumed and "seed" in other.reason and other.entries == {}
    # another format (or another layout without a format tag) is not resumed: everything is redone
    (tmp_path / "other.json").write_text(json.dumps({"fingerprint": {"seed": 0}, "done": {"1": {"x": 1}}}))
    for path, fmt in ((tmp_path / "other.json", "t/2"), (tmp_path / "m.json", "t/3")):
        m = Manifest.open(path, fmt, {"seed": 0}, entries_key="done")
        assert not m.resumed and m.entries == {} and m.reason == "unreadable or of another format"


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == before


@dataclasses.dataclass(kw_only=True)
class _Cfg(RunOptions):
    out: str = option(help="run folder")
    batch_size: int = option(4, check=positive_int, result=True, help="batch size")
    diffloss: bool = option(False, parse=lambda s: s == "on", choices=("on", "off"), cli_default="off", result=True,
                            help="add it")
    flip: bool = option(True, help="random flips")
    tags: list[str] = option(repeat=True, help="a tag (repeat)")
    internal: int = 3


def _parser() -> ArgumentParser:
    return add_config_arguments(ArgumentParser(prog="python -m x"), _Cfg)


def test_cli_generated_from_the_dataclass_with_groups():
    p = _parser()
    cfg = config_from_args(_Cfg, p.parse_args(["--out", "r", "--batch-size", "8", "--diffloss", "on", "--no-flip",
                                               "--tags", "a", "--tags", "b"]))
    assert cfg == _Cfg(out="r", batch_size=8, diffloss=True, flip=False, tags=["a", "b"])
    assert config_from_args(_Cfg, p.parse_args(["--out", "r"])) == _Cfg(out="r")
    shown = p.format_help()
    assert "--batch-size BATCH_SIZE" in shown and "--no-flip" in shown
    assert "(default: 4)" in shown and "(default: off)" in shown and "disable: random flips" in shown
    # the shared options under their own heading, the command's own above them
    own, run = shown.split("\noptions:\n")[1].split("\nrun options:\n")
    assert "--batch-size" in own and "--device" not in own
    assert all(flag in run for flag in ("--out", "--device", "--threads", "--seed", "--overwrite", "--config"))


def test_checks_name_the_flag_and_result_settings_are_marked():
    with pytest.raises(ValueError, match=r"^--batch-size must be a positive integer, got 0$"):
        _Cfg(out="r", batch_size=0).validate()
    with pytest.raises(ValueError, match=r"^--threads must be an integer >= 0, got -1$"):
        _Cfg(out="r", threads=-1).validate()
    assert _Cfg(out="r", batch_size=2).result_settings() == {"seed": 0, "batch_size": 2, "diffloss": False}


def test_config_file_replays_a_run_and_flags_override(tmp_path, capsys):
    run = RunDir(tmp_path / "run", "x", _Cfg(out=str(tmp_path / "run"), batch_size=8, diffloss=True)).check().start()
    p = _parser()
    cfg = config_from_args(_Cfg, p.parse_args(["--config", str(run.file("config.json")), "--no-flip"]))
    assert (cfg.out, cfg.batch_size, cfg.diffloss, cfg.flip) == (str(tmp_path / "run"), 8, True, False)
    cfg = config_from_args(_Cfg, _parser().parse_args(["--config", str(run.file("config.json")), "--batch-size", "2"]))
    assert cfg.batch_size == 2 and cfg.diffloss is True
    (tmp_path / "mine.yaml").write_text("batch-size: 16\nout: o\n")
    assert config_from_args(_Cfg, _parser().parse_args(["--config", str(tmp_path / "mine.yaml")])).batch_size == 16
    for text, message in (("nope: 1\n", "unknown option(s) nope"), ("[1, 2]\n", "must hold a mapping")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(SystemExit):
            _parser().parse_args(["--config", str(tmp_path / "bad.yaml")])
        assert message in capsys.readouterr().err
    other = RunDir(tmp_path / "other", "y", _Cfg(out="o")).check().start()
    with pytest.raises(SystemExit):
        _parser().parse_args(["--config", str(other.file("config.json"))])
    assert "holds a run of y, not of python -m x" in capsys.readouterr().err


def test_run_dir_refuses_foreign_files_and_other_settings_and_resumes_its_own(tmp_path):
    out = tmp_path / "run"
    first = RunDir(out, "x", _Cfg(out=str(out)), outputs=("ckpt.pt", "samples/*")).check()
    assert not first.resuming and not out.exists()  # check() writes nothing
    first.start()
    (out / "ckpt.pt").write_text("weights")
    (out / "samples").mkdir()
    (out / "samples" / "a.png").write_text("png")
    (out / ".ckpt.pt.abc.tmp").write_text("cut short")
    again = RunDir(out, "x", _Cfg(out=str(out), flip=False), outputs=("ckpt.pt", "samples/*")).check()
    assert again.resuming  # flip is not a result setting
    with pytest.raises(ValueError, match=r"other settings \(batch_size: 4 there, 8 now\).*--overwrite"):
        RunDir(out, "x", _Cfg(out=str(out), batch_size=8), outputs=("ckpt.pt", "samples/*")).check()
    with pytest.raises(ValueError, match=r"config.json not written by z"):
        RunDir(out, "z", _Cfg(out=str(out)), outputs=("ckpt.pt", "samples/*")).check()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files x did not write \(notes.txt\)"):
        RunDir(out, "x", _Cfg(out=str(out)), outputs=("ckpt.pt", "samples/*")).check()
    redo = RunDir(out, "x", _Cfg(out=str(out), batch_size=8, overwrite=True), outputs=("ckpt.pt", "samples/*"))
    assert not redo.check().resuming
    redo.start(clear=("ckpt.pt", "samples"))
    assert not (out / "ckpt.pt").exists() and not (out / "samples").exists()
    assert (out / "notes.txt").read_text() == "mine"  # a foreign file is never removed
    assert json.loads((out / "config.json").read_text())["settings"]["batch_size"] == 8
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        RunDir(tmp_path / "file", "x", _Cfg(out="f")).check()


def test_parse_set():
    assert parse_set("w/ DiffLoss/fog=a") == ("w/ DiffLoss/fog", ["a"])
    assert parse_set("clean=r1, r2,r3") == ("clean", ["r1", "r2", "r3"])
    for bad in ("noroot", "=x", "a=", "a=x,,y"):
        with pytest.raises(ValueError, match="expected LABEL=ROOT"):
            parse_set(bad)


def test_argument_mistakes_are_one_line(capsys):
    p = _parser()
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--out", "r", "--diffloss", "maybe"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: argument --diffloss")
    assert err[0].endswith("(see python -m x --help)")


def test_check_out(tmp_path):
    (tmp_path / "f").write_text("x")
    check_out(tmp_path / "new" / "deeper")  # a folder to be made: fine
    check_out(tmp_path / "model.pt", "file")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        check_out(tmp_path / "f")
    with pytest.raises(ValueError, match="is a folder; give a file path"):
        check_out(tmp_path, "file")


def test_config_replays_a_real_run_and_the_rerun_resumes(mini_root, tmp_path, capsys):
    """``--config OUT/config.json`` replays a restoration.train run: with ``--steps`` raised it continues the
    same run (the other settings come from the file), and the rerun reads back what the first run wrote."""
    from restoration.train import main

    out = tmp_path / "run"
    argv = ["--pairs", f"synthetic:lowlight:3:{mini_root}", "--out", str(out), "--steps", "2", "--crop", "32",
            "--batch-size", "2", "--val-images", "0", "--no-progress", "--no-plot", "--threads", "1"]
    assert main(argv) == 0
    first = json.loads((out / "config.json").read_text())
    assert first["command"] == "restoration.train" and first["settings"]["batch_size"] == 2
    assert main(["--config", str(out / "config.json"), "--steps", "3"]) == 0
    done = json.loads((out / "done.json").read_text())
    assert done["step"] == 3 and done["settings"]["batch_size"] == 2 and done["settings"]["crop"] == 32
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]  # steps 1-2 kept, step 3 added
