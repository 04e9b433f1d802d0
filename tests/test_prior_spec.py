"""diffloss.prior.spec and the prior file format: what ``--prior`` means (`resolve_prior`'s defaults, decided in
one place), the ``.safetensors`` + ``.json`` pair (`save_prior`) read back bit for bit, and one-line errors for
files that cannot be used."""
from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import torch

from diffloss import prior as P
from diffloss.prior import spec as prior_spec
from runkit.cli import ArgumentParser
from runkit.options import add_config_arguments, config_from_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"


@pytest.fixture(scope="module")
def tiny_state():
    """A random tiny prior's state dict (float32)."""
    model, _ = P.load_prior("random", init_seed=5)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture()
def tiny_file(tiny_state, tmp_path):
    """A self-describing tiny prior in a run folder, as diffloss.prior.train exports it (float16)."""
    (tmp_path / "run").mkdir()
    sd = {k: v.half() for k, v in tiny_state.items()}
    return P.save_prior(sd, tmp_path / "run" / "prior.safetensors", P.prior_kwargs("tiny"), config_name="tiny",
                        step=7, meta={"seed": 3})


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg and "weights_only=False" not in msg
    return msg


# ------------------------------------------------------------------------------------------ the defaults
def test_builtin_is_the_shipped_prior_with_its_own_config():
    spec = P.resolve_prior()
    assert spec == P.resolve_prior("builtin") == P.PriorOptions().prior_spec()
    assert (spec.path, spec.source, spec.config_name, spec.step) == (P.BUILTIN_PRIOR_FILE, "builtin", "tiny64", 4000)
    assert P.resolve_prior("builtin", "tiny64") == spec  # its own config repeated is fine
    with pytest.raises(P.PriorCheckpointMismatch, match="is a 'tiny64' prior .* but config 'tiny' was asked for"):
        P.resolve_prior("builtin", "tiny")


def test_random_is_untrained_tiny_unless_a_config_is_named():
    spec = P.resolve_prior("random")
    assert (spec.path, spec.source, spec.config_name, spec.kwargs) == (None, "random", "tiny", P.prior_kwargs("tiny"))
    assert P.resolve_prior("random", "tiny64").kwargs == P.prior_kwargs("tiny64")
    custom = P.resolve_prior("random", dict(P.PRIOR_CONFIGS["tiny"], num_res_blocks=2))
    assert custom.config_name == "<custom config>" and custom.kwargs["num_res_blocks"] == 2
    assert "tiny (random weights)" == spec.label
    with pytest.raises(FileNotFoundError, match="not found: 'tiny'"):
        P.resolve_prior("tiny")  # no alias: "random" + config tiny is the spelling, "tiny" is a (missing) path


def test_a_bare_state_dict_is_read_as_adm256_unless_a_config_is_named(tiny_state, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(tiny_state, bare)
    spec = P.resolve_prior(bare)
    assert (spec.path, spec.source, spec.config_name) == (bare, "file", "adm256-uncond")
    with pytest.raises(P.PriorCheckpointMismatch, match="does not match prior config 'adm256-uncond'"):
        P.load_prior(spec)
    model, _ = P.load_prior(P.resolve_prior(bare, "tiny"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_state.items())
    # a .safetensors without its .json is a bare state dict too
    P.save_prior(tiny_state, tmp_path / "alone.safetensors", P.prior_kwargs("tiny"), config_name="tiny")
    P.sidecar_path(tmp_path / "alone.safetensors").unlink()
    assert P.resolve_prior(tmp_path / "alone.safetensors").config_name == "adm256-uncond"
    assert P.resolve_prior(tmp_path / "alone.safetensors", "tiny").config_name == "tiny"


def test_a_self_describing_file_brings_its_config_and_refuses_another(tiny_file):
    spec = P.resolve_prior(tiny_file)
    assert (spec.config_name, spec.step, spec.meta, spec.source) == ("tiny", 7, {"seed": 3}, "file")
    assert spec.kwargs == P.prior_kwargs("tiny") and spec.sha256 == hashlib.sha256(tiny_file.read_bytes()).hexdigest()
    assert P.resolve_prior(tiny_file.parent) == spec  # the run folder
    assert P.resolve_prior(str(tiny_file), "tiny") == spec
    with pytest.raises(P.PriorCheckpointMismatch) as err:
        P.resolve_prior(tiny_file, "adm256-uncond")
    assert "is a 'tiny' prior (its config is in prior.json), but config 'adm256-uncond'" in _one_line(err)
    assert "--prior-config" in str(err.value)


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_missing_prior_names_the_papers_file_and_url(tmp_path, where):
    path = tmp_path / "nope.pt" if where == "file" else tmp_path
    with pytest.raises(FileNotFoundError) as err:
        P.resolve_prior(path)
    msg = str(err.value)
    assert "prior checkpoint not found" in msg and "256x256_diffusion_uncond.pt" in msg and URL in msg
    assert "--prior PATH" in msg and "2.1 GB" in msg and "\n" not in msg


def test_a_missing_builtin_prior_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.setattr(prior_spec, "BUILTIN_PRIOR_FILE", tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="built-in prior .*gone.safetensors.* python -m diffloss.prior.train"):
        P.load_prior("builtin")


def test_resolving_reads_no_weights_and_loading_reads_them_once(tiny_file, monkeypatch):
    import safetensors.torch

    calls = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    spec = P.resolve_prior(tiny_file.parent)
    assert calls == []
    model, _ = P.load_prior(str(tiny_file.parent))  # a value: resolved once, read once, frozen once
    assert len(calls) == 1 and not model.training and not any(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "prior_info")
    P.load_prior(spec)
    assert len(calls) == 2


def test_prior_options_declare_the_two_flags_once():
    p = ArgumentParser(prog="t")
    add_config_arguments(p, P.PriorOptions)
    opts = config_from_args(P.PriorOptions, p.parse_args([]))
    assert (opts.prior, opts.prior_config) == ("builtin", None) and opts.prior_spec().source == "builtin"
    opts = config_from_args(P.PriorOptions, p.parse_args(["--prior", "random", "--prior-config", "tiny64"]))
    assert opts.prior_spec().config_name == "tiny64"
    with pytest.raises(SystemExit):
        p.parse_args(["--prior-config", "adm512"])
    assert P.PriorOptions().result_settings() == {"prior": "builtin", "prior_config": None}


# ------------------------------------------------------------------------------------------ the file format
def test_safetensors_round_trip_is_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"a.weight": torch.randn(3, 4, generator=g).half(), "b.bias": torch.randn(5, generator=g),
          "c.weight": torch.randn(2, 2, generator=g).bfloat16(), "steps": torch.arange(3)}
    sd["a.weight"][0, 0] = float("nan")  # any bit pattern survives, NaN included
    path = P.save_prior(sd, tmp_path / "p.safetensors", {"image_size": 32}, config_name="mine", step=1,
                        command="python -m diffloss.prior.train --out x")
    spec = P.resolve_prior(path)
    assert spec.config_name == "mine" and spec.kwargs == P.prior_kwargs({"image_size": 32})
    back = P.read_prior_weights(spec)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert back[k].view(torch.uint8).equal(v.contiguous().view(torch.uint8)), k
    info = json.loads(P.sidecar_path(path).read_text())
    assert info["command"] == "python -m diffloss.prior.train --out x" and info["format"] == P.PRIOR_FORMAT
    again = P.save_prior(sd, tmp_path / "q.safetensors", {"image_size": 32}, config_name="mine", step=1,
                         command="python -m diffloss.prior.train --out x")
    assert again.read_bytes() == path.read_bytes()  # deterministic bytes: resumed runs compare byte for byte
    with pytest.raises(ValueError, match="NAME.safetensors"):
        P.save_prior(sd, tmp_path / "p.pt", {}, config_name="mine")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_broken_safetensors_file_is_one_value_error_line(tiny_file, damage):
    data = tiny_file.read_bytes()
    broken = {"truncated": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage]
    tiny_file.write_bytes(broken)
    # with the digest recorded in the .json the mismatch is caught first ...
    with pytest.raises(P.PriorCheckpointMismatch) as err:
        P.load_prior(tiny_file)
    assert "prior.safetensors" in _one_line(err) and "prior.json beside it records" in str(err.value)
    # ... and when the .json agrees (or is absent) the reader refuses it in one line too
    side = P.sidecar_path(tiny_file)
    info = json.loads(side.read_text())
    side.write_text(json.dumps(dict(info, sha256=hashlib.sha256(broken).hexdigest())))
    with pytest.raises(P.PriorCheckpointMismatch) as err:
        P.load_prior(tiny_file)
    assert "is not a readable safetensors file" in _one_line(err) and "prior.safetensors" in str(err.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({"format": "diffloss-prior/1", "kwargs": {}})])
def test_a_broken_json_beside_the_weights_is_one_value_error_line(tiny_file, text):
    P.sidecar_path(tiny_file).write_text(text)
    with pytest.raises(P.PriorCheckpointMismatch) as err:
        P.resolve_prior(tiny_file)
    assert "prior.json" in _one_line(err) and "diffloss.prior.train" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04truncated zip"])
def test_a_garbage_torch_file_is_one_safe_line(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(P.PriorCheckpointMismatch) as err:
        P.load_prior(bad)
    assert "bad.pt" in _one_line(err) and "not a prior checkpoint" in str(err.value)


def test_a_pickled_object_is_never_loaded(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": argparse.Namespace(a=1)}, evil)  # needs unpickling
    with pytest.raises(P.PriorCheckpointMismatch) as err:
        P.load_prior(P.resolve_prior(evil, "tiny"))
    assert "pickled objects, which are never loaded" in _one_line(err)
