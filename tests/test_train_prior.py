"""diffloss.prior.train, the prior files it exports, and the built-in trained prior (the resolver and the file
format themselves: tests/test_prior_spec.py)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cubdata import encode_image, generate_mini_cub, load_square_tensor, read_cub
from diffloss import prior as P
from diffloss.prior import train as TP
from diffloss.prior.sampling import ddim_reconstruct
from diffloss.prior.train.data import random_resized_crop, step_draws, training_images
from runkit.rundir import read_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(prior_config="tiny", batch_size=4, ckpt_every=2, sample_every=4, sample_images=4, sample_steps=3,
            warmup_steps=2, progress=False)


@pytest.fixture(scope="module")
def small_cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior-data") / "cub"
    generate_mini_cub(root, n_classes=2, per_class=4, seed=7)
    return root


@pytest.fixture(scope="module")
def tiny_run(small_cub, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior-run") / "run"
    TP.train_prior(out=str(out), cub_root=str(small_cub), steps=4, **FAST)
    return out


# ------------------------------------------------------------------------------------------ draws, crops
def test_step_draws_depend_on_seed_and_step_only():
    a = step_draws(0, 5, 6, 10, 1000, 8)
    b = step_draws(0, 5, 6, 10, 1000, 8)
    c = step_draws(0, 6, 6, 10, 1000, 8)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["noise"], c["noise"])
    assert a["index"].max() < 10 and a["t"].max() < 1000 and a["noise"].shape == (6, 3, 8, 8)


def test_random_resized_crop_range_shape_and_determinism():
    img = torch.arange(3 * 40 * 60, dtype=torch.float32).reshape(3, 40, 60).remainder(256).to(torch.uint8)
    a = random_resized_crop(img, 16, seed=3)
    assert a.shape == (3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, random_resized_crop(img, 16, seed=3))
    outs = {tuple(random_resized_crop(img, 16, seed=s).flatten()[:5].tolist()) for s in range(8)}
    assert len(outs) > 4  # different crops for different seeds
    full = random_resized_crop(img, 40, seed=0, min_scale=1.0, flip=False)
    # min_scale 1 on a non-square image falls back to the centred square, resized to the output size
    expect = img[:, :, 10:50].float().div(127.5).sub(1)
    assert torch.allclose(full, expect, atol=1e-5)


def test_training_images_use_the_train_split_only(small_cub, tmp_path):
    paths = training_images(small_cub)
    idx = read_cub(small_cub)
    assert paths == [idx.image_path(r) for r in idx.split("train")] and len(paths) == 4
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8), "png"))
    (folder / "notes.txt").write_text("x")
    assert training_images(tmp_path / "imgs") == [folder / "a.png"]
    with pytest.raises(FileNotFoundError, match="training data not found: .*nope"):
        training_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        training_images(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ training
def test_run_writes_its_outputs(tiny_run):
    rows = read_table(tiny_run / "log.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] >= r["mse"] for r in rows)  # hybrid = mse + vb
    assert rows[0]["lr"] == pytest.approx(2.5e-4)  # warm-up: the default lr 5e-4 times 1/2
    grid = np.asarray(Image.open(tiny_run / "samples" / "step_0000004.png"))
    # 4 samples of 32 px in a 2 x 2 grid with 2 px padding: 2 + 2 * (32 + 2)
    assert grid.shape == (70, 70, 3)
    tiles = [grid[2 + 34 * r:34 + 34 * r, 2 + 34 * c:34 + 34 * c] for r in range(2) for c in range(2)]
    assert all(t.std() > 0 for t in tiles)  # each tile holds a drawn image, not the white padding
    assert (tiny_run / "loss_curve.png").is_file() and (tiny_run / "done.json").is_file()


def test_resume_gives_the_same_weights(small_cub, tiny_run, tmp_path):
    out = tmp_path / "resumed"
    TP.train_prior(out=str(out), cub_root=str(small_cub), steps=2, **FAST)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.0005 there, 0.001 now\)"):
        TP.train_prior(out=str(out), cub_root=str(small_cub), steps=4, **dict(FAST, lr=1e-3))
    TP.train_prior(out=str(out), cub_root=str(small_cub), steps=4, **FAST)  # the same run, extended: resumes
    for name in ("prior.safetensors", "prior.json"):
        assert (out / name).read_bytes() == (tiny_run / name).read_bytes()
    a = read_table(out / "log.csv")
    b = read_table(tiny_run / "log.csv")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_saved_weights_are_the_ema(tiny_run):
    state = torch.load(tiny_run / "train_state.pt", weights_only=True)
    exported = load_file(tiny_run / "prior.safetensors")
    k = "input_blocks.0.0.weight"
    assert torch.equal(exported[k], state["ema"][k].half())
    assert not torch.equal(state["ema"][k], state["model"][k])


# ------------------------------------------------------------------------------------------ loading
def test_a_trained_prior_loads_without_flags(tiny_run):
    spec = P.resolve_prior(tiny_run / "prior.safetensors")
    assert (spec.config_name, spec.step, spec.source, spec.kwargs) == ("tiny", 4, "file", P.prior_kwargs("tiny"))
    assert spec.meta["seed"] == 0 and spec.sha256 == hashlib.sha256(spec.path.read_bytes()).hexdigest()
    model, diffusion = P.load_prior(spec)
    assert model.image_size == 32 and not hasattr(model, "prior_info")  # the spec says what the prior is
    assert P.resolve_prior(tiny_run) == spec  # the run folder works too
    same, _ = P.load_prior(str(tiny_run))
    k = "out.2.weight"
    assert torch.equal(model.state_dict()[k], same.state_dict()[k])
    assert torch.equal(model.state_dict()[k], load_file(tiny_run / "prior.safetensors")[k].float())
    with pytest.raises(P.PriorCheckpointMismatch, match="is a 'tiny' prior .* but config 'tiny64' was asked for"):
        P.resolve_prior(tiny_run, "tiny64")
    assert P.resolve_prior(tiny_run, "tiny") == spec  # the same config spelled out is fine


def test_train_prior_writes_no_pickle(tiny_run):
    assert not list(tiny_run.glob("prior.pt")) and (tiny_run / "prior.json").is_file()
    info = json.loads((tiny_run / "prior.json").read_text())
    assert info["format"] == P.PRIOR_FORMAT and info["config_name"] == "tiny" and info["step"] == 4


def test_train_prior_cli_one_line_errors(tmp_path, capsys):
    assert TP.main(["--out", str(tmp_path / "o"), "--cub-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training data not found") and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before writing anything


# ------------------------------------------------------------------------------------------ built-in prior
def test_builtin_prior_is_the_recorded_file():
    spec = P.resolve_prior("builtin")
    assert spec.path == P.BUILTIN_PRIOR_FILE and spec.path.suffix == ".safetensors" and spec.source == "builtin"
    assert P.BUILTIN_PRIOR_SHA256, "BUILTIN_PRIOR_SHA256 must record the shipped file's digest"
    assert hashlib.sha256(spec.path.read_bytes()).hexdigest() == P.BUILTIN_PRIOR_SHA256 == spec.sha256
    assert spec.path.stat().st_size < 8 * 2**20
    assert (spec.config_name, spec.step, spec.kwargs) == ("tiny64", 4000, P.prior_kwargs("tiny64"))
    assert "test" not in str(spec.meta["data"])  # trained on the train split
    info = json.loads(P.sidecar_path(spec.path).read_text())
    assert info["format"] == P.PRIOR_FORMAT and info["command"].startswith("python -m diffloss.prior.train")
    assert {v.dtype for v in load_file(spec.path).values()} == {torch.float16}


@pytest.fixture(scope="module")
def builtin_and_random():
    spec = P.resolve_prior("builtin")
    trained, diffusion = P.load_prior(spec)
    random, _ = P.load_prior(P.resolve_prior("random", spec.kwargs), init_seed=0)
    return trained, random, diffusion


@pytest.fixture(scope="module")
def clean_test_images(mini_root):
    idx = read_cub(mini_root)
    recs = idx.split("test")[::12][:10]  # one image per class
    return torch.stack([load_square_tensor(idx.image_path(r), 64) for r in recs]) * 2 - 1


def test_builtin_prior_denoises_ten_times_better_than_random(builtin_and_random, clean_test_images):
    trained, random, diffusion = builtin_and_random
    x0 = clean_test_images
    g = torch.Generator().manual_seed(0)
    errs = {"trained": [], "random": []}
    with torch.no_grad():
        for _ in range(3):
            t = torch.randint(1000, (x0.shape[0],), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            x_t = diffusion.q_sample(x0, t, noise=noise)
            for name, m in (("trained", trained), ("random", random)):
                errs[name].append(float(((m(x_t, t)[:, :3] - noise) ** 2).mean()))
    assert np.mean(errs["random"]) > 10 * np.mean(errs["trained"])


def test_builtin_prior_reconstructs_held_out_images(builtin_and_random, clean_test_images):
    trained, _, diffusion = builtin_and_random
    x0 = clean_test_images[:6]
    rec = ddim_reconstruct(trained, diffusion, x0, t0=500, steps=25, generator=torch.Generator().manual_seed(1))
    a, b = (rec + 1) / 2, (x0 + 1) / 2
    psnr = 10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))
    assert float(psnr.mean()) >= 18.0


@pytest.mark.slow
def test_short_training_reproduces_a_denoiser(mini_root, tmp_path):
    """A short version of the built-in prior's training (docs/prior.md has the full command)."""
    out = tmp_path / "p"
    TP.train_prior(out=str(out), prior_config="tiny64", steps=300, batch_size=16, sample_every=0, ckpt_every=0,
                   progress=False)
    rows = read_table(out / "log.csv")
    assert np.mean([r["mse"] for r in rows[-50:]]) < 0.2 * np.mean([r["mse"] for r in rows[:10]])
    shutil.rmtree(out)


# ------------------------------------------------------------------------------------------ config and CLI
def test_cli_is_the_config_dataclass(tmp_path):
    """Every PriorTrainConfig field is a flag with the field's default; switches map onto the bool fields."""
    import dataclasses

    from runkit.options import config_from_args

    parser = TP.build_parser()
    defaults = TP.PriorTrainConfig(out="o")
    cfg = config_from_args(TP.PriorTrainConfig, parser.parse_args(["--out", "o"]))
    assert cfg == defaults
    cfg = config_from_args(TP.PriorTrainConfig, parser.parse_args(
        ["--out", "o", "--no-flip", "--no-progress", "--batch-size", "8", "--prior-config", "tiny",
         "--export-dtype", "float32", "--min-scale", "0.25"]))
    assert (cfg.flip, cfg.progress, cfg.batch_size, cfg.prior_config, cfg.export_dtype, cfg.min_scale) == \
           (False, False, 8, "tiny", "float32", 0.25)
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TP.PriorTrainConfig)} <= dests and "threads" in dests
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "o", "--prior-config", "nope"])


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "--steps must be a positive integer, got 0"),
    ("batch_size", True, "--batch-size must be a positive integer, got True"),
    ("loader_workers", -1, "--loader-workers must be an integer >= 0, got -1"),
    ("threads", -1, "--threads must be an integer >= 0, got -1"),
    ("lr", 0.0, "--lr must be a positive number, got 0.0"),
    ("ema_rate", 1.0, r"--ema-rate must be in \[0, 1\), got 1.0"),
    ("min_scale", 0.0, r"--min-scale must be in \(0, 1\], got 0.0"),
    ("export_dtype", "bf16", "--export-dtype must be one of float16, float32, got 'bf16'"),
    ("prior_config", "tiny32", "unknown prior config 'tiny32'"),
])
def test_config_validation_names_the_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        TP.PriorTrainConfig(out="o", **{field: value}).validate()
    TP.PriorTrainConfig(out="o", ema_rate=0.0, min_scale=1.0, loader_workers=0).validate()  # the closed ends are fine
