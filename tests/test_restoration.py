"""Restoration networks, the training harness (DiffLoss on/off, exact resume), restoring a CUB root, and
the cached demo restorers. Small and CPU-only: crop 32 (the tiny prior's size), a handful of steps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import restoration.nets as nets_mod
from cubdata import generate_mini_cub, load_rgb, read_cub
from analysis.demo import restorers as demo_restorers
from restoration import train as train_mod
from restoration.nets import (
    NETS,
    build_net,
    clamp01_ste,
    pad_multiple_of,
    parameter_counts,
    restore_tensor,
)
from runkit.runtime import count_parameters
from restoration.restore import MANIFEST, output_rel_path, restore_array, restore_cub_root
from restoration.pairs import open_pairs
from restoration.checkpoint import load_checkpoint
from restoration.train import TrainConfig, train_restoration
from restoration.train.loop import fit_to_prior, validate_restorer
from runkit.rundir import read_table as read_log


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These nets are tiny: one thread is fastest, and robust on a shared, oversubscribed CPU.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cfg(out, mini_root, **kw) -> TrainConfig:
    base = dict(out=str(out), pairs=f"synthetic:lowlight:3:{mini_root}", crop=32, batch_size=4, lr=2e-3, steps=10,
                val_every=0, ckpt_every=0, val_images=4, progress=False, plot=False)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("name", sorted(NETS))
def test_registry_nets_map_unit_range_images(name):
    torch.manual_seed(0)
    net = build_net(name, **({"depth": 5} if name == "dncnn" else {})).eval()
    x = torch.rand(2, 3, 37, 50)  # odd size: restore_tensor pads to the net's multiple and crops back
    with torch.no_grad():
        y = restore_tensor(net, x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def _expected_raw_output(name: str, net, x: torch.Tensor) -> torch.Tensor:
    """Each net's output before its final clamp, from its documented formula and its own sub-modules."""
    if name == "small-unet":
        return x  # the zero-initialised head makes the untrained net the identity
    if name == "dncnn":
        return x - net.body(x)  # the body predicts the residual
    mul, add = net.local_net(x)
    y = x * mul + add
    if net.global_net is None:
        return y
    gamma, color = net.global_net(x)  # out = clamp(C @ (x * M + A), 1e-8, 1) ** gamma
    return torch.einsum("bchw,bdc->bdhw", y, color).clamp(1e-8, 1.0) ** gamma.clamp(min=net.min_gamma).view(-1, 1, 1, 1)


@pytest.mark.parametrize("name, kwargs", [("small-unet", {}), ("dncnn", {"depth": 5}), ("iat", {}),
                                          ("iat", {"with_global": False})])
def test_each_net_computes_its_formula_and_clamps_once(name, kwargs, monkeypatch):
    """The net's own output (no restore_tensor clamp after it) is its formula's value, clamped by clamp01_ste
    exactly once and returned as is: a net returning 5y-2, before or after the clamp, fails here."""
    seen = []  # (input of clamp01_ste, its output)
    real = nets_mod.clamp01_ste

    def spy(z):
        out = real(z)
        seen.append((z.detach().clone(), out))
        return out

    monkeypatch.setattr(nets_mod, "clamp01_ste", spy)
    torch.manual_seed(0)
    net = build_net(name, **kwargs).eval()
    m = pad_multiple_of(net)
    x = torch.rand(2, 3, 8 * m, 12 * m)
    with torch.no_grad():
        y = net(x)
        seen_in_forward = list(seen)
        expected = _expected_raw_output(name, net, x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    if name == "iat" and net.global_net is not None:
        assert not seen_in_forward  # its gamma curve keeps [0, 1] by itself
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
        return
    assert len(seen_in_forward) == 1, "clamp01_ste must be applied exactly once"
    raw, clamped = seen_in_forward[0]
    assert y is clamped  # returned unchanged: nothing is computed after the clamp
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(y, raw.clamp(0, 1))
    if name == "small-unet":
        assert torch.equal(raw, x)  # identity at init, exactly: not clamped into range


def test_parameter_counts():
    counts = parameter_counts()
    assert set(counts) == set(NETS)
    assert 85_000 <= counts["iat"] <= 95_000  # "You Only Need 90K Parameters"
    assert counts["small-unet"] == count_parameters(build_net("small-unet"))
    assert counts["dncnn"] == 558_403  # 17 layers, 64 features, 3 colour channels (hand count below)
    conv = lambda cin, cout, bias=True: cin * cout * 9 + (cout if bias else 0)  # noqa: E731
    assert counts["dncnn"] == conv(3, 64) + 15 * (conv(64, 64, False) + 2 * 64) + conv(64, 3)


def test_small_unet_starts_as_identity_and_clamp_passes_gradients():
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(build_net("small-unet")(x), x)
    z = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    y = clamp01_ste(z)
    y.sum().backward()
    assert y.tolist() == [0.0, 0.5, 1.0] and z.grad.tolist() == [1.0, 1.0, 1.0]


def test_build_net_specs_and_errors():
    net = build_net("restoration.nets:SmallUNet", base=4, depth=1)
    assert net.pad_multiple == 2 and count_parameters(net) < count_parameters(build_net("small-unet"))
    with pytest.raises(ValueError, match="small-unet"):
        build_net("unet9000")
    with pytest.raises(TypeError, match="nn.Module"):
        build_net("builtins:dict", a=1)
    with pytest.raises(ValueError, match="no attribute"):
        build_net("restoration.nets:NoSuchNet")


def test_nets_registry_is_filled_where_nets_are_defined():
    assert NETS.names()[:3] == ("small-unet", "iat", "dncnn")

    @NETS.register("test-identity")
    def identity_net():
        return torch.nn.Identity()

    try:
        assert isinstance(build_net("test-identity"), torch.nn.Identity) and "test-identity" in parameter_counts()
    finally:
        NETS.remove("test-identity")
    with pytest.raises(ValueError, match="test-identity"):
        build_net("test-identity")
    with pytest.raises(TypeError, match="not callable"):
        build_net("restoration.nets:DEFAULT_NET")


def test_fit_to_prior():
    r = torch.rand(2, 3, 64, 48, requires_grad=True)
    c = torch.rand(2, 3, 64, 48)
    a, b = fit_to_prior(r, c, 32, "resize")
    assert a.shape == b.shape == (2, 3, 32, 32)
    a.sum().backward()
    assert r.grad is not None and float(r.grad.abs().sum()) > 0
    a, b = fit_to_prior(r, c, 32, "crop")
    assert torch.equal(b, c[..., 16:48, 8:40])
    same = torch.rand(1, 3, 32, 32)
    assert fit_to_prior(same, same, 32, "resize")[0] is same


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def l2_run(mini_root, tmp_path_factory):
    """A short L2-only run through the CLI (shared by the restore tests)."""
    out = tmp_path_factory.mktemp("runs") / "l2"
    argv = ["--out", str(out), "--pairs", f"synthetic:lowlight:3:{mini_root}", "--crop", "32", "--lr", "3e-3",
            "--steps", "20", "--val-every", "10", "--val-images", "4", "--ckpt-every", "10", "--no-progress"]
    assert train_mod.main(argv) == 0
    return out


def test_l2_training_lowers_the_loss(l2_run):
    rows = read_log(l2_run / "log.csv")
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert all(np.isnan(r["nat"]) and np.isnan(r["sem"]) for r in rows)  # DiffLoss off: no diffusion terms
    assert all(r["total"] == pytest.approx(r["pixel"]) for r in rows)
    first, last = np.mean([r["pixel"] for r in rows[:3]]), np.mean([r["pixel"] for r in rows[-3:]])
    assert last < 0.5 * first
    val = read_log(l2_run / "val.csv")
    assert [v["step"] for v in val] == [10, 20]
    _, ckpt = load_checkpoint(l2_run / "ckpt.pt")
    input_psnr = validate_restorer(build_net("small-unet"), open_pairs(ckpt["config"]["pairs"], "val"), 4)["psnr"]
    assert val[-1]["psnr"] > input_psnr + 3  # the untrained net is the identity, so this is the degraded PSNR
    assert (l2_run / "loss_curve.png").stat().st_size > 1000
    assert ckpt["net"] == "small-unet" and ckpt["net_kwargs"] == {} and ckpt["step"] == 20 and ckpt["final"]
    assert set(ckpt["rng"]) == {"diffloss", "torch"} and "optimizer" in ckpt


def test_diffloss_training_logs_all_terms_and_lowers_the_loss(mini_root, tmp_path):
    cfg = _cfg(tmp_path / "dl", mini_root, diffloss=True, steps=8, lr=3e-3)
    rows = read_log(train_restoration(cfg) / "log.csv")
    for r in rows:
        assert r["nat"] > 0 and r["sem"] > 0
        # crop == prior size: the loss is DiffLoss's total, pixel + gamma * (nat + lam * sem)
        assert r["total"] == pytest.approx(r["pixel"] + 1e-3 * (r["nat"] + 1e-2 * r["sem"]), rel=1e-5)
    assert np.mean([r["pixel"] for r in rows[-3:]]) < 0.7 * np.mean([r["pixel"] for r in rows[:3]])
    done = json.loads((tmp_path / "dl" / "done.json").read_text())
    assert done["step"] == 8 and done["settings"]["diffloss"] is True


def test_diffloss_fit_resize_with_larger_crops(mini_root, tmp_path):
    cfg = _cfg(tmp_path / "fit", mini_root, diffloss=True, steps=2, crop=48, val_images=0)
    rows = read_log(train_restoration(cfg) / "log.csv")
    assert len(rows) == 2 and all(r["nat"] > 0 for r in rows)


@pytest.mark.parametrize("mode", ["resize", "crop", "none"])
def test_diffloss_fit_gives_the_prior_the_fitted_crops_pixel_for_pixel(mode, mini_root, tmp_path, monkeypatch):
    """With 48 px crops and the 32 px tiny prior, the batch DiffLoss receives is the crops resized, their
    centre 32 x 32 or the crops unchanged, as --diffloss-fit says."""
    from diffloss.criterion import DiffLoss
    from restoration.pairs import RandomCropPairs

    crops, at_prior = [], []
    real_item, real_forward = RandomCropPairs.__getitem__, DiffLoss.forward

    def item(self, key):
        low, high = real_item(self, key)
        crops.append((low.clone(), high.clone()))
        return low, high

    def forward(self, restored, clean, *args, **kwargs):
        at_prior.append((restored.detach().clone(), clean.detach().clone()))
        return real_forward(self, restored, clean, *args, **kwargs)

    monkeypatch.setattr(RandomCropPairs, "__getitem__", item)
    monkeypatch.setattr(DiffLoss, "forward", forward)
    train_restoration(_cfg(tmp_path / mode, mini_root, diffloss=True, prior="random", steps=1, crop=48,
                           val_images=0, diffloss_fit=mode))
    low, high = (torch.stack(t) for t in zip(*crops))
    assert low.shape == (4, 3, 48, 48) and len(at_prior) == 1
    fit = {
        "resize": lambda t: F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False, antialias=True),
        "crop": lambda t: t[..., 8:40, 8:40],
        "none": lambda t: t,
    }[mode]
    restored, clean = at_prior[0]
    assert torch.equal(clean, fit(high))
    assert torch.equal(restored, fit(low))  # the untrained small-unet restores step 1's crops to themselves


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(mini_root, tmp_path):
    common = dict(diffloss=True, batch_size=2, steps=6, val_images=0, ckpt_every=3)
    full = train_restoration(_cfg(tmp_path / "full", mini_root, **common))
    part = _cfg(tmp_path / "part", mini_root, **{**common, "steps": 3})
    train_restoration(part)
    resumed = train_restoration(_cfg(tmp_path / "part", mini_root, **common))
    a = torch.load(full / "ckpt.pt", weights_only=False)
    b = torch.load(resumed / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s_a["exp_avg_sq"], s_b["exp_avg_sq"])
    la, lb = read_log(full / "log.csv"), read_log(resumed / "log.csv")
    assert [(r["step"], r["total"], r["nat"]) for r in la] == [(r["step"], r["total"], r["nat"]) for r in lb]


def test_rerun_resumes_and_other_settings_are_refused(mini_root, tmp_path):
    cfg = _cfg(tmp_path / "r", mini_root, steps=2, val_images=0)
    train_restoration(cfg)
    before = (tmp_path / "r" / "ckpt.pt").read_bytes()
    train_restoration(cfg)  # the same command again: finished, nothing to do
    assert (tmp_path / "r" / "ckpt.pt").read_bytes() == before
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.002 there, 0.0001 now\)"):
        train_restoration(_cfg(tmp_path / "r", mini_root, steps=4, val_images=0, lr=1e-4))
    with pytest.raises(ValueError, match="--steps must be a positive integer"):
        TrainConfig(out=str(tmp_path / "x"), steps=0).validate()


def test_global_rng_untouched(mini_root, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_restoration(_cfg(tmp_path / "g", mini_root, steps=2, val_images=0))
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------------------- restore
@pytest.fixture(scope="module")
def small_cub(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cub") / "CUB_200_2011"
    generate_mini_cub(root, n_classes=2, per_class=4, seed=5)
    return root


def test_restore_cub_root_writes_a_valid_root(l2_run, small_cub, tmp_path):
    out = tmp_path / "restored"
    s = restore_cub_root(l2_run / "ckpt.pt", small_cub, out, batch_size=3, progress=False)
    src, dst = read_cub(small_cub), read_cub(out)
    test = src.split("test")
    assert s["n_images"] == s["n_restored"] == len(test) == 4 and s["n_skipped"] == 0
    # the same relative paths, named by the files written (PNG), so any CUB reader finds them
    assert [r.rel_path for r in dst.records] == [output_rel_path(r.rel_path, "png") for r in test]
    assert [(r.image_id, r.class_id, r.is_train, r.bbox) for r in dst.records] == \
        [(r.image_id, r.class_id, r.is_train, r.bbox) for r in test]
    assert (out / "classes.txt").read_text() == (small_cub / "classes.txt").read_text()
    net, _ = load_checkpoint(l2_run / "ckpt.pt")
    for rec in test:
        img_in, img_out = load_rgb(src.image_path(rec)), load_rgb(dst.image_path(rec))
        assert dst.image_path(rec).suffix == ".png" and img_out.shape == img_in.shape  # full resolution
        np.testing.assert_array_equal(img_out, restore_array(net, [img_in])[0])

    # re-running skips finished work; a lost file is redone
    again = restore_cub_root(l2_run / "ckpt.pt", small_cub, out, progress=False)
    assert again["n_restored"] == 0 and again["n_skipped"] == 4
    dst.image_path(test[0]).unlink()
    redo = restore_cub_root(l2_run / "ckpt.pt", small_cub, out, progress=False)
    assert redo["n_restored"] == 1
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and len(manifest["done"]) == 4


def test_restore_refuses_a_folder_made_with_another_checkpoint(l2_run, small_cub, tmp_path):
    out = tmp_path / "restored"
    restore_cub_root(l2_run / "ckpt.pt", small_cub, out, split="train", progress=False)
    other = tmp_path / "other.pt"
    ck = torch.load(l2_run / "ckpt.pt", weights_only=False)
    ck["step"] = 99
    torch.save(ck, other)
    with pytest.raises(ValueError, match="other settings"):
        restore_cub_root(other, small_cub, out, split="train", progress=False)
    s = restore_cub_root(other, small_cub, out, split="train", overwrite=True, progress=False)
    assert s["n_restored"] == 4
    with pytest.raises(ValueError, match="must differ"):
        restore_cub_root(other, small_cub, small_cub, progress=False)


def test_restore_cli(l2_run, small_cub, tmp_path, capsys):
    from restoration.restore import main

    assert main(["--ckpt", str(l2_run), "--cub-root", str(small_cub), "--out", str(tmp_path / "o"), "--split", "all",
                 "--format", "jpeg", "--no-progress"]) == 0
    idx = read_cub(tmp_path / "o")
    assert len(idx.records) == 8 and all(idx.image_path(r).suffix == ".jpg" for r in idx.records)
    assert "8 restored" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- demo
def test_ensure_demo_restorers_trains_once_then_reuses(monkeypatch, tmp_path):
    monkeypatch.setitem(demo_restorers.DEMO_SETTINGS, "warmup_steps", 2)
    monkeypatch.setitem(demo_restorers.DEMO_SETTINGS, "steps", 1)
    monkeypatch.setitem(demo_restorers.DEMO_SETTINGS, "val_images", 1)
    out = demo_restorers.ensure_demo_restorers(("rain",), severity=2, cache=tmp_path)
    assert set(out) == {"rain"} and set(out["rain"]) == {"w/o DiffLoss", "w/ DiffLoss"}
    for path in out["rain"].values():
        assert path.name == "ckpt.pt" and path.is_file()
    on = read_log(out["rain"]["w/ DiffLoss"].parent / "log.csv")
    off = read_log(out["rain"]["w/o DiffLoss"].parent / "log.csv")
    assert on[0]["nat"] > 0 and np.isnan(off[0]["nat"])
    assert on[0]["pixel"] == off[0]["pixel"]  # same warm start, same first batch
    adam = torch.load(out["rain"]["w/ DiffLoss"], weights_only=True)["optimizer"]["state"][0]
    assert float(adam["step"]) == 2 + 1  # the warm-up's Adam state continues (init_optimizer)
    mtime = out["rain"]["w/ DiffLoss"].stat().st_mtime_ns
    assert demo_restorers.ensure_demo_restorers(("rain",), severity=2, cache=tmp_path) == out
    assert out["rain"]["w/ DiffLoss"].stat().st_mtime_ns == mtime  # reused, not retrained
    monkeypatch.setitem(demo_restorers.DEMO_SETTINGS, "steps", 2)  # a changed schedule retrains
    demo_restorers.ensure_demo_restorers(("rain",), severity=2, cache=tmp_path)
    assert torch.load(out["rain"]["w/ DiffLoss"], weights_only=False)["step"] == 2


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("bad", ["unknown-corruption", "severity", "net", "net-kwargs", "prior", "missing-pairs"])
def test_refused_run_leaves_no_run_folder_and_says_one_line(bad, mini_root, tmp_path, capsys):
    out = tmp_path / "run"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    argv = {
        "unknown-corruption": ["--pairs", f"synthetic:nope:3:{mini_root}"],
        "severity": ["--pairs", f"synthetic:fog:9:{mini_root}"],
        "net": ["--pairs", f"synthetic:fog:3:{mini_root}", "--net", "no-such-net"],
        "net-kwargs": ["--pairs", f"synthetic:fog:3:{mini_root}", "--net-kwargs", "{not json"],
        "prior": ["--pairs", f"synthetic:fog:3:{mini_root}", "--diffloss", "on", "--prior", str(junk)],
        "missing-pairs": ["--pairs", str(tmp_path / "no-such-folder")],
    }[bad]
    try:
        rc = train_mod.main(argv + ["--out", str(out), "--steps", "1", "--crop", "32", "--no-progress", "--no-plot"])
    except SystemExit as exc:  # refused by the argument parser
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert not out.exists()  # nothing written before every input was checked


def test_refused_library_call_leaves_no_run_folder(mini_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="nope"):
        train_restoration(_cfg(out, mini_root, pairs="synthetic:nope:3"))
    assert not out.exists()


def test_autocast_reaches_the_criterion_and_is_a_result_setting(monkeypatch, tmp_path):
    """--autocast bf16 runs the prior's UNet calls under bf16 autocast, and a run resumes only under the same
    precision."""
    import diffloss.criterion as crit
    from restoration.train.config import TrainConfig

    seen = []
    real = crit.DiffLoss.__init__

    def spy(self, *a, **k):
        seen.append(k.get("autocast"))
        return real(self, *a, **k)

    monkeypatch.setattr(crit.DiffLoss, "__init__", spy)
    kw = dict(out=str(tmp_path / "r"), net="small-unet", pairs="synthetic:rain:2", steps=1, batch_size=1, crop=32,
              val_images=0, diffloss=True, prior="random", plot=False, progress=False)
    out = train_mod.train_restoration(autocast="bf16", **kw)
    assert seen == ["bf16"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["command"] == "restoration.train" and saved["settings"]["autocast"] == "bf16"
    with pytest.raises(ValueError, match="autocast: 'bf16' there, 'fp32' now"):
        train_mod.train_restoration(autocast="fp32", **kw)
    with pytest.raises(ValueError, match="autocast"):
        TrainConfig(out="x", autocast="fp8").validate()


def test_fp16_overflow_skips_the_step_counts_it_and_an_all_skipped_run_says_so(monkeypatch, tmp_path, caplog,
                                                                                capsys):
    """A forced float16 overflow inside DiffLoss (its gradient scale pushed to 2^20 > 65504) on the second of
    three steps: that step's non-finite gradient never reaches Adam, ``skipped`` marks it in log.csv, a warning
    names it; a run where every step overflows ends in one line."""
    import logging

    from diffloss.criterion import grad_scaling

    real = grad_scaling._power_of_two_scale
    calls = []

    def overflow_on_second_backward(grads):
        calls.append(1)
        scale = real(grads)
        return scale * 2.0**40 if len(calls) == 2 else scale

    monkeypatch.setattr(grad_scaling, "_power_of_two_scale", overflow_on_second_backward)
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1])
    kw = dict(net="small-unet", pairs="synthetic:rain:2", batch_size=1, crop=32, val_images=0, diffloss=True,
              prior="random", autocast="fp16", plot=False, progress=False)
    with caplog.at_level(logging.WARNING, logger="restoration.train.loop"):
        out = train_restoration(out=str(tmp_path / "r"), steps=3, **kw)
    rows = read_log(out / "log.csv")
    assert [r["skipped"] for r in rows] == [0, 1, 0] and len(calls) == 3 and len(steps) == 2
    assert all(np.isfinite(r["total"]) for r in rows)  # the loss was finite: the gradient overflowed
    assert "step 2 skipped" in caplog.text and "float16 gradient overflowed" in caplog.text
    assert "1 of 2 steps skipped so far" in caplog.text

    monkeypatch.setattr(grad_scaling, "_GRAD_TARGET", 2.0**20)  # every backward overflows
    monkeypatch.setattr(grad_scaling, "_power_of_two_scale", real)
    rc = train_mod.main(["--out", str(tmp_path / "all"), "--net", "small-unet", "--pairs", "synthetic:rain:2",
                         "--steps", "2", "--batch-size", "1", "--crop", "32", "--val-images", "0", "--diffloss", "on",
                         "--prior", "random", "--autocast", "fp16", "--no-progress", "--no-plot"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: every one of the 2 steps was skipped") and "float16" in err[0], err
    assert not (tmp_path / "all" / "done.json").exists()
