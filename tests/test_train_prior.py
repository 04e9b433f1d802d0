"""diffloss.prior.train, the prior files it exports, and the built-in trained prior (the resolver and the file
format themselves: tests/test_prior_spec.py)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cubdata import encode_image, generate_mini_cub, load_square_tensor, read_cub
from diffloss import prior as P
from diffloss.prior import train as TP
from diffloss.prior.baselines import PixelWiener, StationaryWiener, fit_blur, one_shot_x0
from diffloss.prior.sampling import ddim_reconstruct
from diffloss.prior.train.data import random_resized_crop, step_draws, training_images
from runkit.rundir import read_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]

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


def test_checkpoints_by_wall_time_so_a_failure_loses_little(small_cub, tiny_run, tmp_path, monkeypatch):
    """``--ckpt-every 0`` does not mean "only at the end": ``--ckpt-minutes`` (on by default) saves anyway (here
    after every step); a run stopped at step 3 keeps step 2, and resuming gives the uninterrupted run's weights."""
    import errno
    import os

    import diffloss.prior.train.loop as loop

    assert TP.PriorTrainConfig(out="x").ckpt_minutes > 0
    real, calls = loop._optimise, {"n": 0}

    def third_step_fails(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "train_state.pt"))
        return real(*a, **k)

    monkeypatch.setattr(loop, "_optimise", third_step_fails)
    kw = dict(FAST, ckpt_every=0, ckpt_minutes=1e-9)
    with pytest.raises(OSError):
        TP.train_prior(out=str(tmp_path / "run"), cub_root=str(small_cub), steps=4, **kw)
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(loop, "_optimise", real)
    TP.train_prior(out=str(tmp_path / "run"), cub_root=str(small_cub), steps=4, **kw)
    assert [r["step"] for r in read_table(tmp_path / "run" / "log.csv")] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "prior.safetensors").read_bytes() == (tiny_run / "prior.safetensors").read_bytes()


def test_saved_weights_are_the_ema(tiny_run):
    state = torch.load(tiny_run / "train_state.pt", weights_only=True)
    exported = load_file(tiny_run / "prior.safetensors")
    k = "input_blocks.0.0.weight"
    assert torch.equal(exported[k], state["ema"][k].half())
    assert not torch.equal(state["ema"][k], state["model"][k])


def test_ema_rate_is_warmed_up_as_the_docs_say(small_cub, tmp_path, monkeypatch):
    """The loop's EMA rate at (0-based) step s is min(--ema-rate, (1 + s) / (10 + s)), recorded from a 4-step run;
    the rates docs/prior.md quotes for --ema-rate 0.999 follow from that rule."""
    from diffloss.prior.train import loop

    rates = []
    real = loop.ema_update
    monkeypatch.setattr(loop, "ema_update", lambda ema, model, rate: (rates.append(rate), real(ema, model, rate))[1])
    TP.train_prior(out=str(tmp_path / "r"), cub_root=str(small_cub), steps=4, **dict(FAST, ema_rate=0.2))
    assert rates == pytest.approx([0.1, 2 / 11, 0.2, 0.2])  # the warm-up, then the cap

    def rule(s):
        return min(0.999, (1 + s) / (10 + s))

    first = 1 + next(s for s in range(20000) if rule(s) >= 0.999)  # as a 1-based step count
    assert (f"{rule(899):.2f}", f"{rule(3999):.4f}", first, round(1 / (1 - rule(3999)))) == ("0.99", "0.9978", 8991, 445)
    doc = (ROOT / "docs" / "prior.md").read_text()
    for text in ("0.99 at step 900", "0.9978 at step 4,000", "from step 8,991 on", "about 445"):
        assert text in doc


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


@pytest.fixture(scope="module")
def closed_form(builtin_and_random, mini_root):
    """The strong baselines of benchmarks/prior_evidence.py (``diffloss.prior.baselines``), fitted on mini-CUB's 80
    clean train images at 64 px; the blur's width on a 50-step grid of timesteps."""
    _, _, diffusion = builtin_and_random
    idx = read_cub(mini_root)
    x = torch.stack([load_square_tensor(idx.image_path(r), 64) for r in idx.split("train")]) * 2 - 1
    return {"pixel Wiener": PixelWiener(diffusion, x), "stationary Wiener": StationaryWiener(diffusion, x),
            "blur": fit_blur(diffusion, x, range(0, 1000, 50), torch.Generator().manual_seed(0))}


def _denoising_errors(models: dict, diffusion, x0: torch.Tensor, draws: int = 3) -> dict[str, float]:
    """Mean ||eps_pred - eps||^2 of each model at the same ``draws`` (t, noise) draws per image."""
    g = torch.Generator().manual_seed(0)
    errs = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(draws):
            t = torch.randint(1000, (x0.shape[0],), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            x_t = diffusion.q_sample(x0, t, noise=noise)
            for name, m in models.items():
                errs[name].append(float(((m(x_t, t)[:, :3] - noise) ** 2).mean()))
    return {name: float(np.mean(v)) for name, v in errs.items()}


def test_builtin_prior_denoises_at_least_twice_as_well_as_the_closed_form_denoisers(
        builtin_and_random, closed_form, clean_test_images):
    """Half the noise error of the best of the Wiener filters and the blur (benchmarks/prior_evidence.py: 0.0128
    against the stationary Wiener filter's 0.0376 on all 120 test images). The untrained net is no baseline:
    it is worse than predicting zero."""
    trained, random, diffusion = builtin_and_random
    errs = _denoising_errors({"prior": trained, "untrained": random, **closed_form}, diffusion, clean_test_images)
    best = min(errs[k] for k in closed_form)
    assert errs["prior"] <= 0.5 * best, errs
    assert errs["untrained"] > 1.0, errs  # predicting zero scores 1


def _recognised(images: torch.Tensor, labels: np.ndarray, ckpts: dict) -> float:
    """Top-1 (%) of the classifiers ``ckpts`` on ``[-1, 1] NCHW`` images, averaged over the classifiers."""
    from classifiers import eval_transform, load_classifier

    pil = [Image.fromarray(torch.round((im.clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).numpy()) for im in images]
    scores = []
    for ckpt in ckpts.values():
        model, info = load_classifier(ckpt)
        tf = eval_transform(info["preprocess"])
        with torch.no_grad():
            pred = model(torch.stack([tf(p) for p in pil])).argmax(1).numpy()
        scores.append(float((pred == labels).mean() * 100))
    return float(np.mean(scores))


def test_builtin_prior_reconstructions_are_recognised_more_often_than_the_baselines(
        builtin_and_random, closed_form, mini_root, tiny_ckpts):
    """The semantic check of benchmarks/prior_evidence.py on 40 test images (4 per class), from t0 = 500, Top-1 of
    the suite's two small classifiers (mean): the prior's DDIM reconstructions (10 steps) at least 20 points above
    the blur's; its one-shot x0 estimates at least 10 points above every baseline's; and its DDIM reconstructions
    above the stationary Wiener filter's run through the same sampler, the strongest baseline (colour alone tells
    mini-CUB's classes apart up to their shape). Each fails with a baseline in the prior's place."""
    trained, _, diffusion = builtin_and_random
    idx = read_cub(mini_root)
    recs = [r for c in range(10) for r in idx.split("test")[12 * c: 12 * c + 4]]
    x0 = torch.stack([load_square_tensor(idx.image_path(r), 64) for r in recs]) * 2 - 1
    labels = np.array([r.class_id - 1 for r in recs])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t0 = torch.full((x0.shape[0],), 500, dtype=torch.long)
    x_t0 = diffusion.q_sample(x0, t0, noise=noise)
    top = {}
    for name, model in (("prior", trained), *closed_form.items()):
        top[name, "one-shot"] = _recognised(one_shot_x0(model, diffusion, x_t0, t0), labels, tiny_ckpts)
        if name in ("prior", "stationary Wiener"):
            top[name, "DDIM"] = _recognised(ddim_reconstruct(model, diffusion, x0, 500, 10, noise=noise), labels,
                                            tiny_ckpts)
    assert top["prior", "DDIM"] >= top["blur", "one-shot"] + 20, top
    assert top["prior", "one-shot"] >= max(top[name, "one-shot"] for name in closed_form) + 10, top
    assert top["prior", "DDIM"] > top["stationary Wiener", "DDIM"], top


def _evidence_script():
    """benchmarks/prior_evidence.py, loaded by path (benchmarks/ is not a package: nothing imports it)."""
    spec = importlib.util.spec_from_file_location("prior_evidence", ROOT / "benchmarks" / "prior_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVIDENCE = ROOT / "docs" / "figures" / "prior-evidence" / "evidence.json"


def _evidence_numbers(r: dict) -> dict[str, list[str]]:
    """The numbers docs/prior.md's prose and the README quote, formatted from ``evidence.json``."""
    d = r["denoisers"]

    def pair(name, kind):
        return f"{d[name][kind]['top1']['resnet-mini']:.1f}% / {d[name][kind]['top1']['vgg-mini']:.1f}%"

    ratio = {k: f"{d[k]['denoising_mse'] / d['trained']['denoising_mse']:.1f}x" for k in ("stationary_wiener", "pixel_wiener")}
    ddim_p = max(t["p_holm"] for t in r["paired"] if t["measurement"].startswith("ddim"))
    both = [ratio["stationary_wiener"], ratio["pixel_wiener"], f"{d['trained']['denoising_mse']:.4f}",
            f"{d['stationary_wiener']['denoising_mse']:.4f}", f"{d['pixel_wiener']['denoising_mse']:.4f}",
            pair("trained", "ddim"), pair("stationary_wiener", "ddim"), f"{d['trained']['ddim']['psnr']:.2f} dB",
            f"{d['stationary_wiener']['one_shot']['psnr']:.2f} dB", f"p <= {ddim_p:.2g}"]
    prior_md = both + [f"{d['untrained']['denoising_mse']:.4f}", f"{d['zero']['denoising_mse']:.4f}",
                       pair("stationary_wiener", "one_shot"), pair("blur", "one_shot"),
                       f"{d['blur']['one_shot']['psnr']:.2f}", f"{r['blur_sigma_at_t0']:g} px",
                       f"{r['seconds']:.0f} s", f"load average of {r['load_average'][0]:.1f}",
                       f"on {r['paired'][0]['n_prior_lower']} of the {r['images']} images"]
    return {"docs/prior.md": prior_md, "README.md": both}


def test_prior_docs_quote_what_the_evidence_benchmark_wrote():
    """docs/prior.md's tables are the benchmark's own rendering of the evidence.json that
    `python benchmarks/prior_evidence.py --out docs/figures/prior-evidence` wrote for the built-in prior with the
    default settings, and every number the prose and the README quote comes from that file. (Rerunning it:
    `test_evidence_benchmark_reproduces_the_published_numbers`, marked slow.)"""
    pe = _evidence_script()
    r = json.loads(EVIDENCE.read_text())
    defaults = pe.build_parser().parse_args([])
    assert (r["prior"], r["prior_sha256"], r["train_step"]) == ("builtin", P.BUILTIN_PRIOR_SHA256, 4000)
    assert (r["images"], r["train_images"], r["t0"], r["ddim_steps"], r["draws"], r["seed"]) == \
           (120, 80, defaults.t0, defaults.ddim_steps, defaults.draws, defaults.seed)
    assert [k for k, _ in pe.DENOISERS] == list(r["denoisers"])
    doc = (ROOT / "docs" / "prior.md").read_text()
    assert pe.markdown_table(r) in doc and pe.markdown_paired_table(r) in doc
    assert "figures/prior-evidence/reconstructions.png" in doc and (EVIDENCE.parent / "reconstructions.png").is_file()
    for name, numbers in _evidence_numbers(r).items():
        text = " ".join((ROOT / name).read_text().split())  # line breaks as spaces
        missing = [n for n in numbers if n not in text]
        assert not missing, f"{name} does not quote {missing} from {EVIDENCE.name}"


@pytest.mark.slow
def test_evidence_benchmark_reproduces_the_published_numbers(tmp_path):
    """The full benchmark (about 15 minutes on 2 cores) gives the published evidence.json: the same settings and,
    within float noise across CPUs, the same numbers (Top-1 within one image of 120)."""
    pe = _evidence_script()
    assert pe.main(["--out", str(tmp_path)]) == 0
    new, old = (json.loads(p.read_text()) for p in (tmp_path / "evidence.json", EVIDENCE))
    for name in old["denoisers"]:
        a, b = new["denoisers"][name], old["denoisers"][name]
        assert a["denoising_mse"] == pytest.approx(b["denoising_mse"], rel=1e-3)
        for kind in ("ddim", "one_shot"):
            assert a[kind]["psnr"] == pytest.approx(b[kind]["psnr"], abs=0.02)
            for arch, top1 in b[kind]["top1"].items():
                assert abs(a[kind]["top1"][arch] - top1) <= 100 / 120 + 1e-9, (name, kind, arch)


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
