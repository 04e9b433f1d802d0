"""Tests of diffloss.prior, diffloss.prior.hspace and diffloss.criterion (issue 3).

Every DiffLoss term is compared with an independent computation that uses guided-diffusion's own
``GaussianDiffusion.q_sample`` / ``_predict_xstart_from_eps`` / ``q_posterior_mean_variance`` and a
forward hook written here, on the "tiny" prior whose zero-initialised layers are re-drawn (a fresh
guided-diffusion UNet outputs exactly 0, which would make the diffusion terms and gradients vanish).
"""
from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import warnings

import pytest
import torch

from diffloss import DiffLoss, DiffLossOutput, PRIOR_CONFIGS, hspace_hook, load_prior, randomize_zero_init_
from diffloss.criterion import T_WEIGHTINGS, diffloss_terms, model_timesteps, timestep_weight_table
from diffloss.prior import (
    PRIOR_CHECKPOINTS,
    PriorCheckpointMismatch,
    activation_checkpointing_mode,
    clone_prior,
    count_prior_parameters,
    freeze_,
    guided_diffusion_checkpoint_gives_input_grads,
    prior_kwargs,
    resolve_prior,
    set_activation_checkpointing,
    zero_initialised_layers,
)
from runkit.runtime import count_parameters

B, S = 2, 32  # batch and size for the tiny prior


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prior():
    return load_prior("random", init_seed=0)  # random weights of the tiny config


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1234)
    restored = torch.rand(B, 3, S, S, generator=g) * 0.8 + 0.1
    clean = torch.rand(B, 3, S, S, generator=g)
    t = torch.tensor([30, 400])
    noise = torch.randn(B, 3, S, S, generator=g)
    return restored, clean, t, noise


def _reference_terms(model, diffusion, restored, clean, t, noise, target):
    """Independent hand computation with guided-diffusion's own functions and a local hook."""
    z, x = restored * 2 - 1, clean * 2 - 1
    pixel = ((z - x) ** 2).mean()
    hs = {}
    handle = model.middle_block.register_forward_hook(lambda m, i, o: hs.__setitem__("h", o))
    preds, feats = [], []
    try:
        for img in (z, x):
            img_t = diffusion.q_sample(img, t, noise=noise)
            with torch.no_grad():
                out = model(img_t, t)  # all 1000 steps, no rescaling: the UNet takes t as is
            eps = out[:, :3]
            if target == "eps":
                pred = eps
            else:
                x0 = diffusion._predict_xstart_from_eps(img_t, t, eps)
                pred = x0 if target == "x0" else diffusion.q_posterior_mean_variance(x0, img_t, t)[0]
            preds.append(pred)
            feats.append(hs["h"])
    finally:
        handle.remove()
    nat = ((preds[0] - preds[1]) ** 2).mean()
    sem = ((feats[0] - feats[1]) ** 2).mean()
    return pixel, nat, sem


# ---------------------------------------------------------------------------------------------------
# the prior
# ---------------------------------------------------------------------------------------------------
def test_adm256_has_the_papers_552814086_parameters_and_shapes():
    assert PRIOR_CHECKPOINTS["adm256-uncond"].num_parameters == 552_814_086
    assert count_prior_parameters("adm256-uncond") == 552_814_086
    model, diffusion = load_prior(resolve_prior("random", "adm256-uncond"), device="meta")  # shapes only, no memory
    assert count_parameters(model) == 552_814_086 and diffusion.num_timesteps == 1000
    x = torch.empty(1, 3, 256, 256, device="meta")
    with hspace_hook(model) as hs:
        out = model(x, torch.zeros(1, dtype=torch.long, device="meta"))
    assert tuple(out.shape) == (1, 6, 256, 256)
    assert tuple(hs.h.shape) == (1, 1024, 8, 8)


@pytest.mark.slow
def test_adm256_real_build_is_frozen_with_552814086_parameters():
    """The full-size random prior on CPU (~9 s, ~2.7 GB): the meta-device test above counts the same
    parameters without the memory."""
    model, diffusion = load_prior(resolve_prior("random", "adm256-uncond"), init_seed=0)
    assert count_parameters(model) == 552_814_086 and model.image_size == 256
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.out[-1].weight.abs().sum() > 0  # the zero-initialised head was re-drawn


def test_imports_stay_light_and_never_touch_guided_diffusion_dist_util():
    code = (
        "import sys, diffloss; assert 'torch' not in sys.modules, 'import diffloss must be lazy'; "
        "import diffloss.prior, diffloss.prior.hspace, diffloss.criterion; "
        "bad = [m for m in sys.modules if m.endswith('dist_util') or m == 'mpi4py']; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_prior_configs_use_the_paper_flags_and_the_same_architecture_family():
    adm = prior_kwargs("adm256-uncond")
    paper = dict(attention_resolutions="32,16,8", class_cond=False, diffusion_steps=1000, image_size=256,
                 learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
                 num_res_blocks=2, resblock_updown=True, use_scale_shift_norm=True)
    assert {k: adm[k] for k in paper} == paper
    for name in ("tiny", "tiny64"):
        kw = prior_kwargs(name)
        assert kw["learn_sigma"] and kw["resblock_updown"] and kw["use_scale_shift_norm"]
        assert kw["attention_resolutions"] and kw["num_channels"] <= 64
    assert prior_kwargs("tiny")["image_size"] == 32
    with pytest.raises(ValueError, match="adm256-uncond.*tiny"):
        prior_kwargs("adm512")
    with pytest.raises(ValueError, match="num_chanels"):
        prior_kwargs({"num_chanels": 3})


def test_random_prior_is_frozen_seeded_and_leaves_global_rng_alone(prior, caplog):
    model, _ = prior
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training, "train() must keep the frozen prior in eval mode"
    state = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="diffloss.prior"):
        again, _ = load_prior("random", init_seed=0)
        other, _ = load_prior("random", init_seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert "untrained prior" in caplog.text
    sd, sd_again, sd_other = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd_again[k]) for k in sd)
    assert not all(torch.equal(sd[k], sd_other[k]) for k in sd)
    layers = zero_initialised_layers(model)
    assert len(layers) > 10 and "out.2" in dict(layers)
    assert all(layer.weight.abs().sum() > 0 for _, layer in layers)


def test_randomize_zero_init_makes_a_fresh_unet_non_degenerate():
    from guided_diffusion.script_util import create_model_and_diffusion

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh, _ = create_model_and_diffusion(**prior_kwargs("tiny"))
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100])
    with torch.no_grad():
        assert fresh(x, t).abs().max() == 0  # the trap: zero output convolution
        a = randomize_zero_init_(clone_prior(fresh), torch.Generator().manual_seed(7))
        b = randomize_zero_init_(clone_prior(fresh), torch.Generator().manual_seed(7))
        assert a(x, t).abs().max() > 0
        assert torch.equal(a(x, t), b(x, t))


def test_checkpoint_roundtrip_and_common_wrappers(prior, tmp_path):
    model, _ = prior
    sd = model.state_dict()
    for name, obj in [("plain.pt", sd), ("wrapped.pt", {"state_dict": sd}),
                      ("ddp.pt", {f"module.{k}": v for k, v in sd.items()})]:
        torch.save(obj, tmp_path / name)
        loaded, diffusion = load_prior(resolve_prior(tmp_path / name, "tiny"))
        assert diffusion.num_timesteps == 1000
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in sd.items())


def test_missing_checkpoint_names_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_prior(tmp_path / "nope.pt")  # a bare state dict is read as adm256-uncond
    msg = str(err.value)
    assert "256x256_diffusion_uncond.pt" in msg and "2.1 GB" in msg and "--prior" in msg
    assert "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt" in msg
    assert "openai/guided-diffusion" in msg


def test_mismatched_checkpoint_names_keys_and_likely_flags(tmp_path):
    wrong, _ = load_prior(resolve_prior("random", dict(PRIOR_CONFIGS["tiny"], learn_sigma=False, class_cond=True)))
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(PriorCheckpointMismatch) as err:
        load_prior(resolve_prior(tmp_path / "wrong.pt", "tiny"))
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "label_emb.weight" in msg and "out.2.weight" in msg
    assert "learn_sigma=False" in msg and "class_cond=True" in msg
    torch.save({"weights": [1, 2]}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="state dict"):
        load_prior(resolve_prior(tmp_path / "junk.pt", "tiny"))


def test_reduced_precision_torso_keeps_float32_output(prior, batch):
    model, _ = prior
    x = batch[0] * 2 - 1
    with torch.no_grad():
        ref = model(x, batch[2])
        for dtype, tol in ((torch.float16, 0.05), (torch.bfloat16, 0.3)):
            low, _ = load_prior("random", dtype=dtype)
            out = low(x, batch[2])
            assert out.dtype == torch.float32 and low.dtype == dtype
            assert (out - ref).abs().max() < tol
    with pytest.raises(ValueError, match="float32"):
        load_prior("random", dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# h-space hook
# ---------------------------------------------------------------------------------------------------
def test_hspace_hook_reads_and_edits_the_middle_block(prior, batch):
    model, _ = prior
    x, t = batch[0] * 2 - 1, batch[2]
    seen = {}
    handle = model.middle_block.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o))
    with torch.no_grad():
        base = model(x, t)
    handle.remove()
    with torch.no_grad(), hspace_hook(model) as hs:
        same = model(x, t)
    assert torch.equal(base, same) and torch.equal(hs.h, seen["h"]) and hs.calls == 1
    assert tuple(hs.h.shape) == (B, 64, 8, 8)
    with torch.no_grad(), hspace_hook(model, edit=lambda h: h + 1.0) as hs:
        edited = model(x, t)
    assert torch.equal(hs.h, seen["h"]) and torch.equal(hs.h_edited, seen["h"] + 1.0)
    assert not torch.allclose(edited, base)
    with pytest.raises(RuntimeError, match="boom"), hspace_hook(model):
        raise RuntimeError("boom")
    assert len(model.middle_block._forward_hooks) == 0
    with torch.no_grad():
        assert torch.equal(model(x, t), base)


# ---------------------------------------------------------------------------------------------------
# the criterion: values
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["eps", "x0", "xprev"])
def test_every_term_matches_a_hand_computation(prior, batch, target):
    model, diffusion = prior
    restored, clean, t, noise = batch
    gamma, lam = 0.3, 2.5  # not the defaults, so that swapped weights would show
    crit = DiffLoss(model, diffusion, gamma=gamma, lam=lam, target=target)
    out = crit(restored, clean, t=t, noise=noise)
    pixel, nat, sem = _reference_terms(model, diffusion, restored, clean, t, noise, target)
    assert isinstance(out, DiffLossOutput) and out.t.dtype == torch.long and torch.equal(out.t, t)
    for got, ref in ((out.pixel, pixel), (out.nat, nat), (out.sem, sem)):
        assert got.ndim == 0 and got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.total, pixel + gamma * (nat + lam * sem), rtol=1e-5, atol=1e-7)
    assert nat > 0 and sem > 0


def test_defaults_are_the_papers(prior, batch):
    crit = DiffLoss(*prior)
    assert (crit.gamma, crit.lam, crit.target, crit.t_range) == (1e-3, 1e-2, "eps", (0, 1000))
    out = crit(*batch)
    torch.testing.assert_close(out.total, out.pixel + 1e-3 * (out.nat + 1e-2 * out.sem))
    assert set(out.scalars()) == {"total", "pixel", "nat", "sem"}


def test_targets_differ_and_identical_images_give_zero(prior, batch):
    restored, clean, t, noise = batch
    values = {tg: DiffLoss(*prior, target=tg)(restored, clean, t=t, noise=noise).nat.item() for tg in ("eps", "x0", "xprev")}
    assert len(set(values.values())) == 3
    out = DiffLoss(*prior)(clean, clean, t=t, noise=noise)
    assert out.pixel == 0 and out.nat == 0 and out.sem == 0 and out.total == 0


def test_t_weighting_is_a_per_sample_weight_normalised_over_t_range(prior, batch):
    model, diffusion = prior
    restored, clean, t, noise = batch
    table = timestep_weight_table(diffusion, "min_snr", (0, 1000))
    assert table.mean() == pytest.approx(1.0) and set(T_WEIGHTINGS) >= {"none", "alpha_bar", "min_snr"}
    out = DiffLoss(model, diffusion, t_weighting="min_snr")(restored, clean, t=t, noise=noise)
    per_sample = [diffloss_terms(model, diffusion, restored[i:i + 1], clean[i:i + 1], t[i:i + 1], noise[i:i + 1])
                  for i in range(B)]
    w = torch.tensor(table[t.numpy()], dtype=torch.float32)
    torch.testing.assert_close(out.nat, (w * torch.stack([p[1] for p in per_sample])).mean())
    torch.testing.assert_close(out.sem, (w * torch.stack([p[2] for p in per_sample])).mean())


def test_respaced_diffusion_feeds_the_unet_the_original_timesteps():
    from guided_diffusion.script_util import create_gaussian_diffusion

    spaced = create_gaussian_diffusion(steps=1000, learn_sigma=True, timestep_respacing="ddim50")
    t = torch.tensor([0, 1, 49])
    mapped = model_timesteps(spaced, t)
    assert mapped.tolist() == [spaced.timestep_map[i] for i in (0, 1, 49)] and mapped[-1] > 900


# ---------------------------------------------------------------------------------------------------
# the criterion: gradients
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target,term", [("eps", "nat"), ("eps", "sem"), ("x0", "nat"), ("xprev", "nat")])
def test_gradient_reaches_restored_and_matches_finite_differences(prior, batch, target, term):
    model, diffusion = prior
    restored, clean, t, noise = batch
    crit = DiffLoss(model, diffusion, target=target)
    r = restored.clone().requires_grad_(True)
    value = getattr(crit(r, clean, t=t, noise=noise), term)
    (grad,) = torch.autograd.grad(value, r)
    assert grad.abs().sum() > 0
    direction = torch.randn(restored.shape, generator=torch.Generator().manual_seed(5))
    analytic = (grad * direction).sum().item()
    # float32 UNet: step 2e-3 keeps truncation and rounding error well under 1% here (measured)
    step = 2e-3
    with torch.no_grad():
        plus = getattr(crit(restored + step * direction, clean, t=t, noise=noise), term).item()
        minus = getattr(crit(restored - step * direction, clean, t=t, noise=noise), term).item()
    numeric = (plus - minus) / (2 * step)
    assert analytic != 0
    assert numeric == pytest.approx(analytic, rel=2e-2)


def test_no_gradient_on_prior_parameters_or_clean_image(prior, batch):
    from guided_diffusion.script_util import create_model_and_diffusion

    restored, clean, t, noise = batch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, diffusion = create_model_and_diffusion(**prior_kwargs("tiny"))  # NOT frozen by the caller
    randomize_zero_init_(model, torch.Generator().manual_seed(0))
    crit = DiffLoss(model, diffusion)
    crit.train()
    assert crit.training and not model.training
    r = restored.clone().requires_grad_(True)
    c = clean.clone().requires_grad_(True)
    crit(r, c, t=t, noise=noise).total.backward()
    assert r.grad is not None and r.grad.abs().sum() > 0
    assert c.grad is None, "the clean image is a constant target"
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_batch_branches_and_checkpointing_give_the_same_numbers_and_gradients(prior, batch):
    model, diffusion = prior
    restored, clean, t, noise = batch
    assert guided_diffusion_checkpoint_gives_input_grads()  # guided-diffusion-sdk 1.0.0 (pinned)
    gd = set_activation_checkpointing(clone_prior(model), True, impl="guided-diffusion")
    th = set_activation_checkpointing(clone_prior(model), True, impl="torch")
    assert activation_checkpointing_mode(gd) == "guided-diffusion" and activation_checkpointing_mode(th) == "torch"
    assert activation_checkpointing_mode(model) == "off"
    results = []
    for m in (model, gd, th):
        for batched in (True, False):
            r = restored.clone().requires_grad_(True)
            out = DiffLoss(m, diffusion, gamma=0.5, lam=1.0, batch_branches=batched)(r, clean, t=t, noise=noise)
            out.total.backward()
            results.append((out, r.grad))
    ref_out, ref_grad = results[0]
    for out, grad in results[1:]:
        for name in ("total", "pixel", "nat", "sem"):
            torch.testing.assert_close(getattr(out, name), getattr(ref_out, name), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-8)
    assert all(p.grad is None for m in (gd, th) for p in m.parameters())
    set_activation_checkpointing(th, False)
    assert not any("forward" in m.__dict__ for m in th.modules()) and activation_checkpointing_mode(th) == "off"
    crit = DiffLoss(clone_prior(model), diffusion, gamma=0.5, lam=1.0, checkpointing=True)
    assert activation_checkpointing_mode(crit.model) == "torch" and "checkpointing='torch'" in repr(crit)
    r = restored.clone().requires_grad_(True)
    crit(r, clean, t=t, noise=noise).total.backward()
    torch.testing.assert_close(r.grad, ref_grad, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="checkpointing"):
        DiffLoss(clone_prior(model), diffusion, checkpointing="yes")


class _OpenAICheckpointFunction(torch.autograd.Function):
    """openai/guided-diffusion's original CheckpointFunction (guided_diffusion/nn.py, MIT licence),
    reproduced to show why a frozen prior needs care: backward differentiates w.r.t. all parameters."""

    @staticmethod
    def forward(ctx, run_function, length, *args):
        ctx.run_function = run_function
        ctx.input_tensors = list(args[:length])
        ctx.input_params = list(args[length:])
        with torch.no_grad():
            output_tensors = ctx.run_function(*ctx.input_tensors)
        return output_tensors

    @staticmethod
    def backward(ctx, *output_grads):
        ctx.input_tensors = [x.detach().requires_grad_(True) for x in ctx.input_tensors]
        with torch.enable_grad():
            shallow_copies = [x.view_as(x) for x in ctx.input_tensors]
            output_tensors = ctx.run_function(*shallow_copies)
        input_grads = torch.autograd.grad(
            output_tensors, ctx.input_tensors + ctx.input_params, output_grads, allow_unused=True
        )
        return (None, None) + input_grads


@pytest.fixture
def openai_checkpoint(monkeypatch):
    from guided_diffusion import nn as gd_nn

    guided_diffusion_checkpoint_gives_input_grads.cache_clear()
    monkeypatch.setattr(gd_nn, "CheckpointFunction", _OpenAICheckpointFunction)
    yield
    monkeypatch.undo()
    guided_diffusion_checkpoint_gives_input_grads.cache_clear()


def test_openai_checkpoint_loses_frozen_input_grads_and_we_route_around_it(prior, batch, request):
    model, diffusion = prior
    restored, clean, t, noise = batch
    r = restored.clone().requires_grad_(True)
    ref_grad, = torch.autograd.grad(diffloss_terms(model, diffusion, r, clean, t, noise)[1], r)
    # openai's AttentionBlock checkpoints unconditionally: emulate it with use_checkpoint on the attention
    from guided_diffusion.unet import AttentionBlock

    victim = clone_prior(model)  # cloned (and frozen) while the sdk's working CheckpointFunction is active
    for m in victim.modules():
        if isinstance(m, AttentionBlock):
            m.use_checkpoint = True
    request.getfixturevalue("openai_checkpoint")
    assert not guided_diffusion_checkpoint_gives_input_grads()
    r = restored.clone().requires_grad_(True)
    nat = diffloss_terms(victim, diffusion, r, clean, t, noise)[1]
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(nat, r)  # the failure a frozen prior meets with openai's code
    with pytest.raises(ValueError, match="impl='torch'"):
        set_activation_checkpointing(clone_prior(model), True, impl="guided-diffusion")
    freeze_(victim)  # detects the broken checkpoint() and reroutes the blocks around it
    assert activation_checkpointing_mode(victim) == "torch"
    for enabled in (True, False):
        set_activation_checkpointing(victim, enabled)
        r = restored.clone().requires_grad_(True)
        crit = DiffLoss(victim, diffusion)
        (grad,) = torch.autograd.grad(crit(r, clean, t=t, noise=noise).nat, r)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-10)
    assert activation_checkpointing_mode(victim) == "off" and "forward" in victim.output_blocks[0][0].__dict__


@pytest.fixture(scope="module")
def small_batch():
    """One 16x16 image: CPU bf16/fp16 kernels are ~10x slower than float32 ones."""
    g = torch.Generator().manual_seed(99)
    return torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g), torch.tensor([250]), \
        torch.randn(1, 3, 16, 16, generator=g)


def _value_and_grad(crit, restored, clean, t, noise, ctx=None):
    r = restored.clone().requires_grad_(True)
    with ctx if ctx is not None else contextlib.nullcontext():
        out = crit(r, clean, t=t, noise=noise)
    out.total.backward()
    return out, r.grad


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_option_equals_an_autocast_region_and_approximates_float32(prior, small_batch, amp):
    model, diffusion = prior
    ref, ref_grad = _value_and_grad(DiffLoss(model, diffusion, gamma=1.0, lam=1.0), *small_batch)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    inner, inner_grad = _value_and_grad(DiffLoss(model, diffusion, gamma=1.0, lam=1.0, autocast=amp), *small_batch)
    outer, outer_grad = _value_and_grad(DiffLoss(model, diffusion, gamma=1.0, lam=1.0), *small_batch,
                                        ctx=torch.autocast("cpu", dtype=dtype))
    assert all(torch.equal(getattr(inner, k), getattr(outer, k)) for k in ("total", "nat", "sem"))
    assert torch.equal(inner_grad, outer_grad)
    assert inner.nat.dtype == torch.float32 and not torch.equal(inner.nat, ref.nat)  # autocast did act
    for k in ("nat", "sem"):
        torch.testing.assert_close(getattr(inner, k), getattr(ref, k), rtol=2e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(inner_grad.flatten(), ref_grad.flatten(), dim=0) > 0.99
    with pytest.raises(ValueError, match="autocast"):
        DiffLoss(model, diffusion, autocast="int8")


@pytest.fixture(scope="module")
def paper_weight_batch():
    """One 32x32 image: at gamma=1e-3, lam=1e-2 the gradient entering an fp16 UNet is below fp16's smallest
    subnormal (6e-8) at this size, so unscaled fp16 autocast gives exactly zero."""
    g = torch.Generator().manual_seed(7)
    clean = torch.rand(1, 3, S, S, generator=g)
    restored = (clean + 0.1 * torch.randn(1, 3, S, S, generator=g)).clamp(0, 1)
    return restored, clean, torch.tensor([250]), torch.randn(1, 3, S, S, generator=g)


def _diffusion_grad(crit, restored, clean, t, noise):
    """d(total - pixel)/d restored: the diffusion terms' gradient alone, and the output."""
    r = restored.clone().requires_grad_(True)
    out = crit(r, clean, t=t, noise=noise)
    (grad,) = torch.autograd.grad(out.total - out.pixel, r)
    return out, grad


@pytest.mark.parametrize("batch_branches", [True, False])
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_autocast_keeps_the_diffusion_gradient_at_the_papers_weights(prior, paper_weight_batch, amp,
                                                                     batch_branches):
    model, diffusion = prior
    kw = dict(gamma=1e-3, lam=1e-2, batch_branches=batch_branches)
    ref, ref_grad = _diffusion_grad(DiffLoss(model, diffusion, **kw), *paper_weight_batch)
    out, grad = _diffusion_grad(DiffLoss(model, diffusion, autocast=amp, **kw), *paper_weight_batch)
    assert ref_grad.abs().max() > 0 and grad.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.99
    torch.testing.assert_close(grad.norm(), ref_grad.norm(), rtol=5e-2, atol=0)  # scale divided out again
    torch.testing.assert_close(out.total, ref.total, rtol=1e-3, atol=0)  # the value is not scaled
    # the pixel term's gradient is untouched by the internal scaling
    r = paper_weight_batch[0].clone().requires_grad_(True)
    total = DiffLoss(model, diffusion, autocast=amp, **kw)(r, *paper_weight_batch[1:]).total
    (full,) = torch.autograd.grad(total, r)
    pixel_grad = 2 * (2 * r.detach() - 1 - (2 * paper_weight_batch[1] - 1)) * 2 / r.numel()
    torch.testing.assert_close(full - grad, pixel_grad, rtol=1e-4, atol=1e-9)


def test_fp16_overflow_is_detected_counted_and_passed_on(prior, small_batch, monkeypatch, caplog):
    """A forced overflow: scaling the UNet's output gradients to 2^20 (float16 ends at 65504) makes the float16
    backward inf. After unscaling it is caught: one warning, one count, and the gradient stays non-finite so that
    the caller's check skips the step (GradScaler's contract); the forward value is untouched."""
    from diffloss.criterion import grad_scaling

    model, diffusion = prior
    crit = DiffLoss(model, diffusion, gamma=1.0, lam=1.0, autocast="fp16")
    with caplog.at_level(logging.WARNING, logger=grad_scaling.__name__):
        ok, ok_grad = _value_and_grad(crit, *small_batch)
    assert torch.isfinite(ok_grad).all() and crit.grad_overflows == 0 and "overflowed" not in caplog.text
    monkeypatch.setattr(grad_scaling, "_GRAD_TARGET", 2.0**20)
    with caplog.at_level(logging.WARNING, logger=grad_scaling.__name__):
        out, grad = _value_and_grad(crit, *small_batch)
    assert torch.equal(out.total, ok.total)
    assert not torch.isfinite(grad).all() and crit.grad_overflows == 1
    assert "float16 UNet's backward pass overflowed" in caplog.text and "scale 2^" in caplog.text
    # the functional core reports it to its callback
    calls = []
    r = small_batch[0].clone().requires_grad_(True)
    diffloss_terms(model, diffusion, r, *small_batch[1:], autocast_dtype=torch.float16,
                   on_grad_overflow=lambda: calls.append(1))[1].backward()
    assert calls == [1]
    # float32 runs no scaling, so there is nothing to overflow and nothing is counted
    fp32 = DiffLoss(model, diffusion, gamma=1.0, lam=1.0)
    _value_and_grad(fp32, *small_batch)
    assert fp32.grad_overflows == 0


def test_checkpointing_under_cpu_autocast_torch_impl_works_guided_diffusion_impl_is_refused(prior, small_batch):
    model, diffusion = prior
    plain, plain_grad = _value_and_grad(DiffLoss(model, diffusion, autocast="bf16"), *small_batch)
    ckpt, ckpt_grad = _value_and_grad(DiffLoss(clone_prior(model), diffusion, autocast="bf16", checkpointing=True),
                                      *small_batch)
    assert torch.equal(ckpt.total, plain.total)
    torch.testing.assert_close(ckpt_grad, plain_grad)
    gd = DiffLoss(clone_prior(model), diffusion, autocast="bf16", checkpointing="guided-diffusion")
    with pytest.raises(ValueError, match="impl='torch'"):  # instead of a dtype error deep inside backward
        gd(*small_batch[:2])


def test_channels_last_option_gives_the_same_numbers_and_gradients(prior, batch):
    model, diffusion = prior
    ref, ref_grad = _value_and_grad(DiffLoss(model, diffusion, gamma=1.0, lam=1.0), *batch)
    crit = DiffLoss(clone_prior(model), diffusion, gamma=1.0, lam=1.0, channels_last=True)
    assert crit.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    out, grad = _value_and_grad(crit, *batch)
    for k in ("total", "pixel", "nat", "sem"):
        torch.testing.assert_close(getattr(out, k), getattr(ref, k), rtol=1e-5, atol=1e-8)
    # other convolution kernels sum in another order: float32 rounding relative to the largest entry
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item())


def test_compile_option_compiles_every_block_but_keeps_middle_block_eager(prior, monkeypatch):
    import torch._dynamo

    model, diffusion = prior
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    # config.patch, not monkeypatch.setattr: undoing a setattr on dynamo's ConfigModule deletes the option
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=8):
        victim = clone_prior(model)
        DiffLoss(victim, diffusion, compile=dict(backend="aot_eager"))
        ids = {id(m) for m, _ in compiled}
        blocks = [*victim.input_blocks, *victim.middle_block, *victim.output_blocks, victim.time_embed, victim.out]
        assert ids == {id(b) for b in blocks} and id(victim.middle_block) not in ids
        assert all(kw == {"backend": "aot_eager", "dynamic": False} for _, kw in compiled)
        # one dynamo cache entry per block and input shape: the default limit (8) would leave most blocks eager
        assert torch._dynamo.config.recompile_limit >= 2 * len(blocks)
    assert torch._dynamo.config.recompile_limit >= 8  # still an option after the test
    with pytest.raises(TypeError, match="compile"):
        DiffLoss(model, diffusion, compile="yes")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_prior_gives_the_same_numbers_and_gradients(prior, batch, backend):
    model, diffusion = prior
    for batched in (True, False):
        ref, ref_grad = _value_and_grad(DiffLoss(model, diffusion, gamma=1.0, lam=1.0, batch_branches=batched), *batch)
        crit = DiffLoss(clone_prior(model), diffusion, gamma=1.0, lam=1.0, batch_branches=batched,
                        compile=dict(backend=backend))
        for _ in range(2):
            out, grad = _value_and_grad(crit, *batch)
            for k in ("total", "nat", "sem"):
                torch.testing.assert_close(getattr(out, k), getattr(ref, k), rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# randomness
# ---------------------------------------------------------------------------------------------------
def test_deterministic_under_a_generator_and_global_rng_untouched(prior, batch):
    restored, clean, _, _ = batch
    state = torch.get_rng_state()
    runs = [DiffLoss(*prior, generator=torch.Generator().manual_seed(5))(restored, clean) for _ in range(2)]
    seeded = DiffLoss(*prior, generator=5)(restored, clean)
    other = DiffLoss(*prior, generator=torch.Generator().manual_seed(6))(restored, clean)
    assert torch.equal(state, torch.get_rng_state())
    for a in runs[1:] + [seeded]:
        assert torch.equal(a.t, runs[0].t) and torch.equal(a.total, runs[0].total)
    assert not torch.equal(other.total, runs[0].total)


def test_t_range_bounds_the_sampled_timesteps(prior):
    crit = DiffLoss(*prior, t_range=(100, 200), generator=0)
    t = crit.sample_timesteps(4000, "cpu")
    assert t.dtype == torch.long and t.min() == 100 and t.max() == 199
    for bad in ((0, 1001), (5, 5), (-1, 10), "all"):
        with pytest.raises(ValueError, match="t_range"):
            DiffLoss(*prior, t_range=bad)


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------
def test_nan_and_inf_are_rejected(prior, batch):
    restored, clean, t, noise = batch
    crit = DiffLoss(*prior)
    bad = restored.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="restored contains 1 NaN"):
        crit(bad, clean)
    bad = clean.clone()
    bad[1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="clean contains 0 NaN and 1 Inf"):
        crit(restored, bad)


def test_far_outside_unit_range_warns_exactly_once(prior, batch):
    restored, clean, t, noise = batch
    crit = DiffLoss(*prior)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crit(restored * 2 - 1, clean * 255, t=t, noise=noise)  # [-1, 1] and [0, 255] mix-ups together
        crit(restored * 255, clean, t=t, noise=noise)  # every training step: still one warning
    mine = [w for w in caught if issubclass(w.category, UserWarning)]
    msgs = [str(w.message) for w in mine]
    assert len(msgs) == 1 and "[0, 1]" in msgs[0] and "restored" in msgs[0] and "clean" in msgs[0]
    assert mine[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DiffLoss(*prior)((restored * 1.2).clamp(-0.1, 1.1), clean, t=t, noise=noise)  # slight overshoot: fine


def test_wrong_channels_sizes_and_types_say_what_works(prior, batch):
    restored, clean, t, noise = batch
    crit = DiffLoss(*prior)
    with pytest.raises(ValueError, match="3-channel.*got 4 channels"):
        crit(torch.rand(B, 4, S, S), torch.rand(B, 4, S, S))
    with pytest.raises(ValueError, match=r"30x30.*multiples of 4.*32x32"):
        crit(torch.rand(B, 3, 30, 30), torch.rand(B, 3, 30, 30))
    with pytest.raises(ValueError, match="same shape"):
        crit(restored, clean[:1])
    with pytest.raises(TypeError, match="uint8"):
        crit((restored * 255).to(torch.uint8), clean)
    with pytest.raises(ValueError, match="NCHW"):
        crit(restored[0], clean[0])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\]"):
        crit(restored, clean, t=torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="noise"):
        crit(restored, clean, noise=noise[:1])
    with pytest.raises(ValueError, match="unconditional"):
        crit(restored, clean, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="eps.*x0.*xprev"):
        DiffLoss(*prior, target="v")
    with pytest.raises(ValueError, match="t_weighting"):
        DiffLoss(*prior, t_weighting="snr")
    with pytest.raises(ValueError, match="gamma"):
        DiffLoss(*prior, gamma=-1.0)
    # another size the UNet can take runs (64 = 16 x 4), with a note in the log
    out = crit(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert torch.isfinite(out.total)


# ---------------------------------------------------------------------------------------------------
# registries: prior configs and timestep weightings (names, the table of differences, plugins)
# ---------------------------------------------------------------------------------------------------
#: a plugin config and weighting, reached as "diffloss_test_plugins:NAME" (this module under a plain name)
PLUGIN_TINY = dict(PRIOR_CONFIGS["tiny"], num_res_blocks=2)


def plugin_weighting(diffusion):
    return [float(i >= 500) for i in range(diffusion.num_timesteps)]


@pytest.fixture
def plugin_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffloss_test_plugins", sys.modules[__name__])
    return "diffloss_test_plugins"


def test_prior_configs_are_one_base_plus_their_differences():
    from diffloss.prior.configs import ADM_BASE

    assert PRIOR_CONFIGS.names() == ("adm256-uncond", "tiny", "tiny64", "adm64", "adm128")
    expected_sizes = {"adm256-uncond": 256, "tiny": 32, "tiny64": 64, "adm64": 64, "adm128": 128}
    for name in PRIOR_CONFIGS:
        cfg = PRIOR_CONFIGS[name]
        assert cfg["image_size"] == expected_sizes[name]
        assert {k: cfg[k] for k in ("class_cond", "learn_sigma", "diffusion_steps", "noise_schedule",
                                    "resblock_updown", "use_scale_shift_norm")} == \
               {k: ADM_BASE[k] for k in ("class_cond", "learn_sigma", "diffusion_steps", "noise_schedule",
                                         "resblock_updown", "use_scale_shift_norm")}
    # the numbers a released or built-in checkpoint depends on
    meta_tiny64, _ = load_prior(resolve_prior("random", "tiny64"), device="meta")
    assert count_prior_parameters("tiny64") == count_parameters(meta_tiny64)
    assert prior_kwargs("tiny")["channel_mult"] == "1,1,2" and prior_kwargs("tiny64")["channel_mult"] == "1,1,2,2"
    assert prior_kwargs("adm256-uncond")["channel_mult"] == ""  # guided-diffusion derives it from image_size


def test_prior_config_and_t_weighting_plugins(plugin_module, prior, batch):
    spec = f"{plugin_module}:PLUGIN_TINY"
    assert prior_kwargs(spec)["num_res_blocks"] == 2 and prior_kwargs(spec)["image_size"] == 32
    with pytest.raises(ValueError, match="cannot import prior config"):
        prior_kwargs(f"{plugin_module}:NOPE")
    model, diffusion = prior
    restored, clean, t, noise = batch
    table = timestep_weight_table(diffusion, f"{plugin_module}:plugin_weighting", (0, 1000))
    assert table[:500].sum() == 0 and table[500:] == pytest.approx(2.0)  # mean 1 over the range
    out = DiffLoss(model, diffusion, t_weighting=f"{plugin_module}:plugin_weighting")(restored, clean, t=t, noise=noise)
    per_sample = [diffloss_terms(model, diffusion, restored[i:i + 1], clean[i:i + 1], t[i:i + 1], noise[i:i + 1])
                  for i in range(B)]
    # t = [30, 400]: both below 500, weight 0 -> no diffusion terms at all
    assert out.nat == 0 and out.sem == 0 and per_sample[0][1] > 0
