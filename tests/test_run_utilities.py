"""The shared run utilities of cubdata: registry, manifest, torch threads, CLI generation, output checks."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from runkit.cli import ArgumentParser, add_config_arguments, check_out, config_from_args, option
from runkit.manifest import Manifest
from runkit.registry import Registry, resolve_name
from runkit.runtime import torch_threads


def test_registry_registers_where_defined_and_reads_like_a_dict():
    reg = Registry("widget", plugin=lambda spec, obj: obj)

    @reg.register("a")
    def make_a():
        return "A"

    reg["b"] = len
    assert reg.names() == ("a", "b") and list(reg.keys()) == ["a", "b"] and reg.values() == [make_a, len]
    assert reg["a"] is make_a and reg.get("missing", None) is None
    assert reg.get("json:dumps") is json.dumps  # a plug-in, resolved with pkgutil.resolve_name
    with pytest.raises(KeyError, match=r"unknown widget 'c'; valid names: a, b \(or 'pkg.module:attr'\)"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)
    del reg["b"]
    assert "b" not in reg and len(reg) == 1
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
    # an older layout is read through the tool's converter, and still compared
    (tmp_path / "old.json").write_text(json.dumps({"fingerprint": {"seed": 0}, "done": {"1": {"x": 1}}}))
    legacy = lambda doc: {"settings": doc["fingerprint"], "done": doc["done"]} if "fingerprint" in doc else None
    assert Manifest.open(tmp_path / "old.json", "t/2", {"seed": 0}, entries_key="done", legacy=legacy).entries == {"1": {"x": 1}}
    assert not Manifest.open(tmp_path / "old.json", "t/2", {"seed": 0}, entries_key="done").resumed


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == before


@dataclasses.dataclass
class _Cfg:
    out: str = option(help="run folder")
    batch: int = option(4, flag="--batch-size", aliases=("--batch",), help="batch size")
    diffloss: bool = option(False, parse=lambda s: s == "on", choices=("on", "off"), cli_default="off", help="add it")
    flip: bool = option(True, help="random flips")
    internal: int = 3


def test_cli_generated_from_the_dataclass():
    p = ArgumentParser(prog="x")
    add_config_arguments(p, _Cfg)
    cfg = config_from_args(_Cfg, p.parse_args(["--out", "r", "--batch", "8", "--diffloss", "on", "--no-flip"]))
    assert cfg == _Cfg(out="r", batch=8, diffloss=True, flip=False)
    assert config_from_args(_Cfg, p.parse_args(["--out", "r"])) == _Cfg(out="r")
    shown = p.format_help()
    assert "--batch-size BATCH_SIZE" in shown and "--batch " not in shown and "--no-flip" in shown
    assert "(default: 4)" in shown and "(default: off)" in shown and "disable: random flips" in shown


def test_argument_mistakes_are_one_line(capsys):
    p = ArgumentParser(prog="python -m x")
    add_config_arguments(p, _Cfg)
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
