"""analysis.hspace (the Fig. 2 h-space study and its figures, analysis.hspace.plots) and analysis.table2_plot."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import hspace as H
from analysis.hspace.cli import config_from_args
from analysis.hspace.report import DISTANCE_COLUMNS


# ------------------------------------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_prior():
    from diffloss import load_prior

    return load_prior("random", init_seed=0)  # the tiny config


@pytest.fixture(scope="module")
def extractor():
    return H.build_feature_extractor("none", size=32, init_seed=0)


@pytest.fixture(scope="module")
def folder_group(tmp_path_factory, mini_root):
    """An image folder holding copies (as PNG, other names) of three mini-CUB test images."""
    from cubdata import encode_image, load_rgb, read_cub

    idx = read_cub(mini_root)
    dst = tmp_path_factory.mktemp("folder-group")
    for rec in idx.split("test")[:3]:
        img = load_rgb(idx.image_path(rec))[::-1].copy()  # flipped: a different image
        (dst / "sub").mkdir(exist_ok=True)
        (dst / "sub" / f"img_{rec.image_id:03d}.png").write_bytes(encode_image(img, "png"))
    return dst


def _h(seed=0, shape=(3, 16, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) + 0.5


def _same(rows_a, rows_b) -> bool:
    """Rows equal value for value, NaN equal to NaN (label_flip is NaN without a classifier)."""
    return json.dumps(rows_a) == json.dumps(rows_b)


def _svd(h):
    B, C, Hh, W = h.shape
    return torch.linalg.svd(h.reshape(B, C, Hh * W).double(), full_matrices=True)


# ------------------------------------------------------------------------------------------------ perturbation
def test_perturb_alpha_zero_returns_h_unchanged():
    h = _h()
    assert H.perturb_principal(h, 0.0) is h
    assert H.perturb_principal(h, torch.zeros(3)) is h
    mixed = H.perturb_principal(h, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(mixed[0], h[0]) and torch.equal(mixed[2], h[2])  # bit-identical
    assert not torch.allclose(mixed[1], h[1])


@pytest.mark.parametrize("shape", [(3, 16, 4, 4), (2, 4, 3, 3)])  # C >= HW and C < HW code paths
def test_principal_component_matches_svd(shape):
    h = _h(1, shape)
    U, S, Vh = _svd(h)
    ref = (S[:, 0, None, None] * U[:, :, :1] @ Vh[:, :1, :]).reshape(shape)
    got = H.principal_component(h)
    assert got.shape == h.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 2.0, -0.5])
def test_perturbation_changes_only_the_principal_component(alpha):
    h = _h(2).double()
    U, S, Vh = _svd(h)
    delta = (H.perturb_principal(h, alpha) - h).reshape(3, 16, 16)
    coeff = U.transpose(1, 2) @ delta @ Vh.transpose(1, 2)   # delta in the basis of h's singular vectors
    expected = torch.zeros_like(coeff)
    expected[:, 0, 0] = alpha * S[:, 0]
    torch.testing.assert_close(coeff, expected, atol=1e-10, rtol=1e-10)
    # singular values: s1 -> (1 + alpha) s1, the others untouched
    S_new = torch.linalg.svdvals(H.perturb_principal(h, alpha).reshape(3, 16, 16))
    want = torch.cat([(1 + alpha) * S[:, :1], S[:, 1:]], dim=1).abs().sort(dim=1, descending=True).values
    torch.testing.assert_close(S_new, want, atol=1e-10, rtol=1e-10)


def test_larger_alpha_moves_h_further():
    h = _h(3)
    s1 = _svd(h)[1][:, 0]
    dists = []
    for a in H.make_alphas(4, 0.5):
        d = torch.linalg.vector_norm((H.perturb_principal(h, a) - h).reshape(3, -1), dim=1)
        torch.testing.assert_close(d.double(), a * s1, rtol=1e-5, atol=1e-5)  # ||h' - h||_F = alpha s1
        dists.append(d)
    for lo, hi in zip(dists, dists[1:]):
        assert bool((hi > lo).all())


def test_perturb_validation():
    with pytest.raises(ValueError, match="B=3"):
        H.perturb_principal(_h(), torch.ones(2))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        H.perturb_principal(torch.zeros(4, 4), 1.0)
    with pytest.raises(TypeError):
        H.perturb_principal(np.zeros((1, 2, 2, 2)), 1.0)


def test_batch_svd_direction_and_perturbation():
    h = _h(4, (5, 8, 2, 2))
    v, sd = H.batch_principal_direction(h)
    X = h.reshape(5, -1).double()
    X = X - X.mean(0)
    S = torch.linalg.svdvals(X)
    assert math.isclose(sd, float(S[0]) / 2.0, rel_tol=1e-9)     # sqrt(n - 1) = 2
    assert math.isclose(float(v.double().norm()), 1.0, rel_tol=1e-5)
    proj = (X @ v.reshape(-1).double()).std(unbiased=True)
    assert math.isclose(float(proj), sd, rel_tol=1e-5)
    out = H.perturb_along(h, torch.tensor([0.0, 1.0, 0, 0, 2.0]), v, sd)
    assert torch.equal(out[0], h[0])
    torch.testing.assert_close(out[4] - h[4], 2.0 * sd * v, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        H.batch_principal_direction(h[:1])


def test_make_alphas_and_schedule():
    assert H.make_alphas(4, 0.5) == (0.5, 1.0, 1.5, 2.0)
    assert H.make_alphas(alphas=[1, -2]) == (1.0, -2.0)
    with pytest.raises(ValueError, match="non-zero"):
        H.make_alphas(alphas=[0.0, 1.0])
    ts = H.ddim_schedule(500, 6)
    assert ts[0] == 0 and ts[-1] == 500 and len(ts) == 6 and ts == sorted(set(ts))
    assert H.ddim_schedule(10, 11) == list(range(11))
    with pytest.raises(ValueError, match="steps"):
        H.ddim_schedule(10, 12)
    with pytest.raises(ValueError, match="t0"):
        H.ddim_schedule(1000, 5)


# ------------------------------------------------------------------------------------------------ sampling
def test_ddim_generate_is_guided_diffusion_ddim_and_keeps_global_rng(tiny_prior):
    model, diffusion = tiny_prior
    spaced = H.spaced_diffusion(diffusion, H.ddim_schedule(400, 4))
    x_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    ours = H.ddim_generate(model, spaced, x_t)
    assert torch.equal(torch.get_rng_state(), state)
    ref = spaced.ddim_sample_loop(model, x_t.shape, noise=x_t, clip_denoised=True, eta=0.0)
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    assert ours.abs().max() <= 1.0


def test_unperturbed_generation_is_deterministic_for_a_seed(tiny_prior):
    model, diffusion = tiny_prior
    spaced = H.spaced_diffusion(diffusion, H.ddim_schedule(300, 3))
    x0 = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def gen(seed):
        x_t = H.start_latent(model, spaced, x0, "noise", torch.Generator().manual_seed(seed))
        return H.ddim_generate(model, spaced, x_t)

    a, b, c = gen(7), gen(7), gen(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    inv1 = H.start_latent(model, spaced, x0, "ddim-inversion")
    inv2 = H.start_latent(model, spaced, x0, "ddim-inversion")
    assert torch.equal(inv1, inv2)
    with pytest.raises(ValueError, match="Generator"):
        H.start_latent(model, spaced, x0, "noise", None)


def test_levels_batched_edit_only_after_t_edit(tiny_prior):
    from diffloss.prior.hspace import hspace_hook

    model, diffusion = tiny_prior
    timesteps = H.ddim_schedule(400, 5)                       # [0, 100, 200, 300, 400]
    spaced = H.spaced_diffusion(diffusion, timesteps)
    x_t = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    edits = []

    def recording_hook(m, edit=None):
        edits.append(edit)
        return hspace_hook(m, edit=edit)

    alphas = torch.tensor([0.0, 1.0, 3.0])
    out = H.ddim_generate(model, spaced, x_t.repeat(3, 1, 1, 1), alphas, t_edit=250, hook=recording_hook)
    assert edits[0].calls == 2                                # t = 400 and 300 only
    alone = H.ddim_generate(model, spaced, x_t)
    torch.testing.assert_close(out[0:1], alone, atol=1e-5, rtol=1e-4)   # level 0 = unperturbed generation
    d1, d2 = (out[1] - out[0]).norm(), (out[2] - out[0]).norm()
    assert 0 < d1 < d2
    same = H.ddim_generate(model, spaced, x_t.repeat(2, 1, 1, 1), torch.tensor([0.0, 1.0]), t_edit=401)
    torch.testing.assert_close(same[0], same[1], atol=0, rtol=0)        # no step reaches t_edit: no edit


# ------------------------------------------------------------------------------------------------ features
def test_feature_distances_hand_computation():
    f = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]],
                      [[1.0, 1.0], [1.0, 1.0], [2.0, 1.0]]])
    d = H.feature_distances(f)
    assert d.shape == (2, 2)
    torch.testing.assert_close(d, torch.tensor([[5.0, 10.0], [0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[N, 1\+K, D\]"):
        H.feature_distances(torch.zeros(2, 1, 3))


def test_resnet_features_frozen_and_2048d(extractor):
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    extractor.train()
    assert not extractor.training and not extractor.backbone.training
    f = extractor(x)
    assert f.shape == (2, 2048)
    f.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in extractor.parameters())


# ------------------------------------------------------------------------------------------------ images
def test_groups_and_selection(mini_root, folder_group):
    cub = H.list_group_images(mini_root)
    assert len(cub) == 120 and cub[0].key.isdigit() and cub[0].path.is_file()
    folder = H.list_group_images(folder_group)
    assert [it.key for it in folder] == sorted(it.key for it in folder) and folder[0].key.startswith("sub/img_")
    sel = H.select_images({"a": cub, "b": list(reversed(cub))}, 5, seed=3)
    assert {it.key for it in sel["a"]} == {it.key for it in sel["b"]}              # the same images in both
    assert len(sel["a"]) == 5 and sel == H.select_images({"a": cub, "b": list(reversed(cub))}, 5, seed=3)
    mixed = H.select_images({"a": cub, "f": folder}, 2, seed=0, paired=False)   # no shared keys: per group
    assert len(mixed["a"]) == 2 and len(mixed["f"]) == 2
    img = H.load_image_tensor(cub[0].path, 32)
    assert img.shape == (3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    with pytest.raises(FileNotFoundError, match="CUB root or"):
        H.list_group_images(folder_group / "missing")


def test_selection_says_which_images_a_group_lacks(mini_root, caplog):
    cub = H.list_group_images(mini_root)[:24]
    lacking = [it for it in cub if it.key != cub[5].key]                 # one image missing from a group
    with caplog.at_level("WARNING", logger="analysis.hspace"):
        sel = H.select_images({"clean": cub, "restored": lacking}, None)
    assert [it.key for it in sel["clean"]] == [it.key for it in sel["restored"]] == [it.key for it in lacking]
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "23 of 24" in said and repr(cub[5].key) in said and "clean" in said
    caplog.clear()
    with caplog.at_level("WARNING", logger="analysis.hspace"):           # nothing dropped: nothing said
        H.select_images({"clean": cub, "again": list(reversed(cub))}, 5, seed=3)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_selection_refuses_when_too_few_images_match(mini_root, folder_group):
    cub = H.list_group_images(mini_root)[:24]
    with pytest.raises(ValueError, match="10 of 24") as err:                # fewer than half of the available
        H.select_images({"clean": cub, "restored": cub[:10]}, None)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="3 of 8"):                      # fewer than half of the requested
        H.select_images({"clean": cub, "restored": cub[:3]}, 8)
    assert len(H.select_images({"clean": cub, "restored": cub[:5]}, 8)["restored"]) == 5  # enough: all 5 matched
    folder = H.list_group_images(folder_group)
    with pytest.raises(ValueError, match="share no image"):                # zero matched
        H.select_images({"clean": cub, "folder": folder}, 2)
    unpaired = H.select_images({"clean": cub, "folder": folder}, 2, paired=False)
    assert len(unpaired["clean"]) == 2 and len(unpaired["folder"]) == 2


def test_study_checks_every_image_decodes_before_generating(tmp_path, tiny_prior, extractor):
    from cubdata import ImageDecodeError, generate_mini_cub, read_cub

    root = tmp_path / "cub"
    generate_mini_cub(root, n_classes=2, per_class=4)
    idx = read_cub(root)
    idx.image_path(idx.split("test")[-1]).write_bytes(b"junk")             # the last image of the selection

    def no_unet(*a, **k):
        raise AssertionError("nothing may be generated before every image is known to decode")

    with pytest.raises(ImageDecodeError, match="cannot decode"):
        H.run_hspace_study({"clean": root}, *tiny_prior, extractor, _config(images_per_group=0), progress=False,
                           hook=no_unet)


# ------------------------------------------------------------------------------------------------ statistics
def _rows():
    rows = []
    for g, vals in (("clean", [4.0, 5.0, 6.0]), ("degraded", [1.0, 2.0, 3.0])):
        for i, v in enumerate(vals):
            for level in (1, 2):
                d = v * level
                rows.append({"group": g, "image_id": str(i), "level": level, "alpha": 0.5 * level, "distance": d,
                             "path": f"x/{i}.png", "cosine_distance": 0.1 * d, "relative_distance": 0.5 * d,
                             "dh_norm": 10.0 * level, "dh_rel": 0.2 * level, "pixel_change": 2.0 * d,
                             "label_flip": float(g == "clean" and i < level)})   # clean: 1 flip at level 1, 2 at 2
    return rows


def test_summary_and_mann_whitney_hand_values():
    rows = _rows()
    s = {(r["group"], r["level"]): r for r in H.summarize_distances(rows)}
    assert s[("clean", 1)]["mean"] == 5.0 and s[("clean", 1)]["median"] == 5.0 and s[("clean", 1)]["n"] == 3
    assert math.isclose(s[("degraded", 2)]["std"], 2.0)        # values 2, 4, 6
    tests = H.mann_whitney_tests(rows)
    assert len(tests) == 2
    t = tests[0]
    assert (t["group_a"], t["group_b"], t["level"]) == ("clean", "degraded", 1)
    assert t["u_statistic"] == 9.0                             # every clean > every degraded: U = 3 * 3
    assert math.isclose(t["p_value"], 0.1, rel_tol=1e-9)        # exact two-sided: 2 / C(6, 3)


def test_csv_round_trip(tmp_path):
    rows = _rows()
    H.write_csv(tmp_path / "distances.csv", rows, DISTANCE_COLUMNS)
    back = H.read_distances(tmp_path)
    assert back == [{**r, "image_id": str(r["image_id"])} for r in rows]
    with pytest.raises(FileNotFoundError, match="python -m analysis.hspace"):
        H.read_distances(tmp_path / "nope")
    H.write_csv(tmp_path / "distances.csv", rows, DISTANCE_COLUMNS[:6])  # without the recorded metrics
    with pytest.raises(ValueError, match="expected columns"):
        H.read_distances(tmp_path)


# ------------------------------------------------------------------------------------------------ edit size, metrics, paired tests
def test_edit_records_dh_size_per_sample():
    h = _h(5)
    s1 = torch.linalg.svdvals(h.reshape(3, 16, 16).double())[:, 0]
    hn = torch.linalg.vector_norm(h.reshape(3, -1).double(), dim=1)
    edit = H.PerturbationEdit(torch.tensor([0.0, 0.5, 2.0]), "sample")
    torch.testing.assert_close(edit.dh_norm, torch.zeros(3, dtype=torch.float64))   # nothing edited yet
    edit(h)                                                     # inactive: no edit, nothing recorded
    assert edit.calls == 0
    edit.active = True
    edit(h)
    edit(h * 2)                                                 # second step: s1 and ||h|| double
    want = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64) * s1 * 1.5      # mean of 1 x and 2 x
    torch.testing.assert_close(edit.dh_norm, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(edit.dh_rel, torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64) * s1 / hn,
                               rtol=1e-5, atol=1e-6)                  # the ratio is the same at both steps
    # batch-svd: |dh| = |alpha| * sd of the unperturbed samples along their first principal direction
    hb = _h(6, (3, 8, 2, 2))
    edit = H.PerturbationEdit(torch.tensor([0.0, 0.0, -1.5]), "batch-svd")
    edit.active = True
    edit(hb)
    _, sd = H.batch_principal_direction(hb[:2])
    torch.testing.assert_close(edit.dh_norm, torch.tensor([0.0, 0.0, 1.5 * sd], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_feature_distance_metrics_hand_computation():
    f = torch.tensor([[[3.0, 4.0], [6.0, 8.0], [4.0, -3.0], [-3.0, -4.0]]])
    m = H.feature_distance_metrics(f)
    assert set(m) == {"distance", "cosine_distance", "relative_distance"}
    torch.testing.assert_close(m["distance"], torch.tensor([[5.0, math.sqrt(50), 10.0]], dtype=torch.float64))
    torch.testing.assert_close(m["cosine_distance"], torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(m["relative_distance"],
                               torch.tensor([[1.0, math.sqrt(50) / 5, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(m["distance"], H.feature_distances(f))
    zero = H.feature_distance_metrics(torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]))
    assert float(zero["distance"]) == 1.0                      # undefined without a reference norm: NaN
    assert math.isnan(float(zero["cosine_distance"])) and math.isnan(float(zero["relative_distance"]))


def _paired_rows(a, b, ids_a=None, ids_b=None, level=1):
    rows = []
    for g, vals, ids in (("clean", a, ids_a), ("degraded", b, ids_b)):
        ids = ids or [str(i) for i in range(len(vals))]
        for i, v in zip(ids, vals):
            rows.append({"group": g, "image_id": i, "level": level, "alpha": 1.0, "distance": float(v),
                         "path": f"{g}/{i}.png"})
    return rows


def test_wilcoxon_is_paired_by_image_hand_values():
    # a = b + (1..5): the per-image shift is small against the spread between images
    b = [1.0, 10.0, 20.0, 30.0, 40.0]
    a = [v + d for v, d in zip(b, (1, 2, 3, 4, 5))]
    # degraded rows in another order and with an image the other group lacks: pairing is by image id
    rows = _paired_rows(a, list(reversed(b)) + [99.0], ids_b=["4", "3", "2", "1", "0", "extra"])
    (t,) = H.wilcoxon_tests(rows)
    assert (t["group_a"], t["group_b"], t["level"], t["metric"], t["test"]) == ("clean", "degraded", 1, "distance",
                                                                                 "wilcoxon")
    assert t["n_pairs"] == 5 and t["statistic"] == 0.0         # all 5 differences positive: W- = 0
    assert math.isclose(t["p_value"], 2 / 2**5, rel_tol=1e-9)  # exact two-sided: 2 * P(W- = 0) = 0.0625
    assert t["median_diff"] == 3.0 and t["median_a"] == 23.0 and t["median_b"] == 20.0
    (mw,) = H.mann_whitney_tests(_paired_rows(a, b))            # unpaired: the shift drowns in the spread
    assert mw["p_value"] > 0.5
    same = H.wilcoxon_tests(_paired_rows(a, a))
    assert same[0]["p_value"] == 1.0 and same[0]["n_pairs"] == 5
    none = H.wilcoxon_tests(_paired_rows(a, b, ids_b=["x", "y", "z", "u", "v"]))
    assert none[0]["n_pairs"] == 0 and math.isnan(none[0]["p_value"])


def test_group_tests_choice_and_metrics():
    rows = _rows()
    wx = H.group_tests(rows)                                    # the default: paired Wilcoxon, flips by McNemar
    assert [t["test"] for t in wx[:5]] == ["wilcoxon"] * 4 + ["mcnemar"] and len(wx) == 2 * 5   # levels x metrics
    assert [t["metric"] for t in wx[:5]] == ["distance", "cosine_distance", "relative_distance", "pixel_change",
                                             "label_flip"]
    mw = H.group_tests(rows, test="mann-whitney", metrics=("distance",))
    ref = H.mann_whitney_tests(rows)
    assert [(t["u_statistic"], t["p_value"]) for t in mw if t["test"] == "mann-whitney"] == \
        [(t["u_statistic"], t["p_value"]) for t in ref]
    assert [t["test"] for t in mw] == ["mann-whitney", "fisher"] * 2
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['relative_distance'\]"):
        H.group_tests([{k: v for k, v in r.items() if k != "relative_distance"} for r in rows])
    with pytest.raises(ValueError, match="wilcoxon, mann-whitney"):
        H.group_tests(rows, test="t-test")


def test_summary_reports_cosine_relative_and_edit_size():
    rows = _rows()
    s = {(r["group"], r["level"]): r for r in H.summarize_distances(rows)}
    c = s[("clean", 2)]                                         # distances 8, 10, 12
    assert c["median"] == 10.0 and math.isclose(c["cosine_median"], 1.0) and math.isclose(c["relative_mean"], 5.0)
    assert math.isclose(c["cosine_mean"], 1.0) and math.isclose(c["relative_median"], 5.0)
    assert c["dh_norm_mean"] == 20.0 and math.isclose(c["dh_rel_mean"], 0.4)
    assert c["pixel_change_mean"] == 20.0 and math.isclose(c["flip_rate"], 2 / 3)
    assert 0 <= c["flip_ci_low"] <= 2 / 3 <= c["flip_ci_high"] <= 1
    assert s[("degraded", 2)]["flip_rate"] == 0.0 and s[("degraded", 2)]["flip_ci_high"] == 0.0
    no_clf = H.summarize_distances([dict(r, label_flip=float("nan")) for r in rows])   # no classifier: NaN
    assert all(math.isnan(r["flip_rate"]) and math.isnan(r["flip_ci_low"]) for r in no_clf)
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['dh_norm', 'dh_rel'\]"):
        H.summarize_distances([{k: v for k, v in r.items() if not k.startswith("dh_")} for r in rows])


def test_batch_svd_is_named_for_what_it_computes():
    import re

    assert H.SVD_MODES == ("sample", "batch-svd", "pullback")
    assert H.HSpaceConfig(svd_mode="batch-svd", batch_images=2).svd_mode == "batch-svd"
    assert H.PerturbationEdit(torch.zeros(2), "batch-svd").svd_mode == "batch-svd"
    for unknown in ("batch-pca", "nope"):
        with pytest.raises(ValueError, match="unknown svd mode .*valid: sample, batch-svd, pullback"):
            H.HSpaceConfig(svd_mode=unknown, batch_images=2)
        with pytest.raises(ValueError, match="unknown svd mode"):
            H.PerturbationEdit(torch.zeros(2), unknown)
    p = H.build_parser()
    assert p.parse_args(["--svd-mode", "batch-svd"]).svd_mode == "batch-svd"
    with pytest.raises(SystemExit):
        p.parse_args(["--svd-mode", "batch-pca"])
    text = re.sub(r"\s+", " ", p.format_help())
    assert "not Haas et al." in text
    assert "not Haas et al." in re.sub(r"\s+", " ", H.batch_principal_direction.__doc__)
    with pytest.raises(ValueError, match="batch-size >= 2"):
        H.HSpaceConfig(svd_mode="batch-svd", batch_images=1)


# ------------------------------------------------------------------------------------------------ the study
def _config(**kw):
    base = dict(t0=300, steps=3, t_edit=100, alphas=(1.0, 2.0), images_per_group=2, batch_images=2, grid_images=1)
    base.update(kw)
    return H.HSpaceConfig(**base)


def test_study_is_deterministic_and_resumes(tmp_path, tiny_prior, extractor, mini_root, folder_group):
    model, diffusion = tiny_prior
    groups = {"clean": mini_root, "flipped": folder_group}      # no shared keys: unpaired
    with pytest.raises(ValueError, match="share no image"):
        H.run_hspace_study(groups, model, diffusion, extractor, _config(), out=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    r1 = H.run_hspace_study(groups, model, diffusion, extractor, _config(), out=tmp_path / "a", progress=False,
                            paired=False)
    assert len(r1.rows) == 2 * 2 * 2                           # groups x images x levels
    assert {r["level"] for r in r1.rows} == {1, 2}
    assert all(r["distance"] >= 0 for r in r1.rows)
    for r in r1.rows:                                          # the new per-image columns
        assert 0 <= r["cosine_distance"] <= 2 and r["relative_distance"] >= 0 and r["dh_norm"] > 0
        assert 0 < r["dh_rel"] < r["alpha"] + 1e-6              # |dh| = alpha s1 <= alpha ||h||_F
    by = {(r["group"], r["image_id"], r["level"]): r for r in r1.rows}
    for (g, i, level), r in by.items():
        if level == 2:
            assert r["dh_norm"] > by[(g, i, 1)]["dh_norm"]     # alpha 2 edits h more than alpha 1
    assert r1.unet_evals_per_image == 3 * 3 and r1.seconds_per_image > 0
    key, inp, gens = r1.grid["clean"][0]
    assert inp.dtype == np.uint8 and inp.shape == (32, 32, 3) and len(gens) == 3
    r2 = H.run_hspace_study(groups, model, diffusion, extractor, _config(), out=tmp_path / "b", progress=False,
                            paired=False)
    assert [r["distance"] for r in r1.rows] == [r["distance"] for r in r2.rows]
    assert np.array_equal(r1.grid["clean"][0][2][0], r2.grid["clean"][0][2][0])

    def no_unet(*a, **k):
        raise AssertionError("a resumed run must not generate again")

    r3 = H.run_hspace_study(groups, model, diffusion, extractor, _config(), out=tmp_path / "a", progress=False,
                            hook=no_unet, paired=False)
    assert _same(r3.rows, r1.rows) and np.array_equal(r3.grid["clean"][0][1], inp)
    # another protocol -> recomputed (not mixed)
    r4 = H.run_hspace_study(groups, model, diffusion, extractor, _config(alphas=(1.0, 3.0)), out=tmp_path / "a",
                            progress=False, paired=False)
    assert r4.rows[1]["alpha"] == 3.0 and r4.rows[0]["distance"] == r1.rows[0]["distance"]


def test_a_manifest_of_another_layout_is_redone(tmp_path, tiny_prior, extractor, mini_root):
    """A manifest.json of another format (here a ``{"fingerprint", "done"}`` document) is ignored:
    every image is computed again, the same numbers come back, and the manifest is rewritten in the shared layout."""
    from diffloss.prior.hspace import hspace_hook

    model, diffusion = tiny_prior
    cfg = _config(images_per_group=2, grid_images=0)
    r1 = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, out=tmp_path, progress=False)
    new = json.loads((tmp_path / "manifest.json").read_text())
    assert new["format"] == H.study.MANIFEST_FORMAT and new["complete"] is True and len(new["done"]["clean"]) == 2
    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": new["settings"], "done": new["done"]}))
    calls = []

    def counting_hook(m, edit=None):
        calls.append(edit)
        return hspace_hook(m, edit=edit)

    r2 = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, out=tmp_path,
                            progress=False, hook=counting_hook)
    assert calls                # nothing was taken from the other layout
    assert _same(r2.rows, r1.rows)
    assert json.loads((tmp_path / "manifest.json").read_text())["format"] == H.study.MANIFEST_FORMAT


def test_write_outputs_and_figures(tmp_path, tiny_prior, extractor, mini_root, monkeypatch):
    from analysis.hspace import plots
    from drawn_figures import assert_grid_drawn, assert_histograms_drawn, assert_overlay_drawn, describe_figure

    drawn, real_save = {}, plots.save_figure

    def recording_save(fig, stem, *a, **k):
        drawn[Path(stem).name] = describe_figure(fig)
        return real_save(fig, stem, *a, **k)

    monkeypatch.setattr(plots, "save_figure", recording_save)
    model, diffusion = tiny_prior
    res = H.run_hspace_study({"clean": mini_root, "again": mini_root}, model, diffusion, extractor,
                             _config(steps=2), out=tmp_path, progress=False)
    paths = H.write_study_outputs(res, tmp_path)
    assert sorted(drawn) == ["grid", "histogram_overlay", "histograms"]
    assert_histograms_drawn(drawn["histograms"], {"clean": 2, "again": 2}, levels=2)
    assert_overlay_drawn(drawn["histogram_overlay"], {"clean": 2, "again": 2})
    assert [len(v) for v in res.grid.values()] == [1, 1]                        # grid_images=1 per group
    assert_grid_drawn(drawn["grid"], res.grid, levels=2)
    for stem in ("histograms", "histogram_overlay", "grid"):
        for ext in ("png", "pdf"):
            assert (tmp_path / f"{stem}.{ext}").is_file()
    assert paths["tests"].name == "wilcoxon.csv"                 # the paired test is the default
    with open(paths["tests"]) as fh:
        wx = list(csv.DictReader(fh))
    assert len(wx) == 2 * 4 and {float(t["p_value"]) for t in wx} == {1.0}   # identical groups; 4 metrics
    assert {t["metric"] for t in wx} == {"distance", "cosine_distance", "relative_distance", "pixel_change"}
    assert {t["p_adjust"] for t in wx} == {"holm"} and {float(t["p_adjusted"]) for t in wx} == {1.0}
    with open(paths["distances"]) as fh:
        header = next(csv.reader(fh))
    assert header[:6] == ["group", "image_id", "level", "alpha", "distance", "path"]   # old columns first
    assert header[6:] == ["cosine_distance", "relative_distance", "dh_norm", "dh_rel", "pixel_change", "label_flip"]
    back = H.read_distances(tmp_path)
    assert back[0]["dh_norm"] == res.rows[0]["dh_norm"] and isinstance(back[0]["cosine_distance"], float)
    mw_paths = H.write_study_outputs(res, tmp_path / "mw", test="mann-whitney", figures=False)
    assert mw_paths["tests"].name == "mannwhitney.csv" and not (tmp_path / "mw" / "histograms.png").exists()
    with open(mw_paths["tests"]) as fh:
        mw = list(csv.DictReader(fh))
    assert len(mw) == 2 * 4 and float(mw[0]["p_value"]) == 1.0 and "u_statistic" in mw[0]
    info = json.loads((tmp_path / "summary.json").read_text())
    assert info["seconds_per_image"] > 0 and info["protocol"]["alphas"] == [1.0, 2.0]
    assert info["test"] == "wilcoxon" and len(info["group_tests"]) == 8
    assert info["p_adjust"] == "holm" and info["tests_in_family"] == 8
    grid = H.load_grid(tmp_path)
    assert np.array_equal(grid["clean"][0][2][1], res.grid["clean"][0][2][1])


def test_study_ddim_inversion_and_batch_svd(tiny_prior, extractor, mini_root):
    model, diffusion = tiny_prior
    cfg = _config(start="ddim-inversion", svd_mode="batch-svd", images_per_group=2, batch_images=2)
    res = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, progress=False)
    assert len(res.rows) == 4 and res.unet_evals_per_image == 3 * 3 + 2
    with pytest.raises(ValueError, match="batch-size >= 2"):
        H.HSpaceConfig(svd_mode="batch-svd", batch_images=1)


# ------------------------------------------------------------------------------------------------ pullback edit, pixels, flips
def test_middle_block_output_is_the_hooked_h(tiny_prior):
    from diffloss.prior.hspace import hspace_hook

    model, _ = tiny_prior
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    with torch.no_grad(), hspace_hook(model) as hs:
        model(x, t)
        h = H.middle_block_output(model, x, t)
    torch.testing.assert_close(h, hs.h)


def test_pullback_direction_is_the_gradient_of_the_top_singular_value(tiny_prior):
    """d = J^T (s1 u1 v1^T) / ||.|| is the unit gradient of s1(h(x_t))^2 (autograd through svdvals); the model's
    weights get no gradient."""
    from diffloss.prior.sampling import ddim_schedule, spaced_diffusion

    model, diffusion = tiny_prior
    spaced = spaced_diffusion(diffusion, ddim_schedule(300, 3, 1000))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    d = H.pullback_direction(model, spaced, x, 2)
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        h = H.middle_block_output(model, xg, torch.full((2,), 2), call=spaced._wrap_model(model))
        s1 = torch.linalg.svdvals(h.reshape(2, h.shape[1], -1).double())[:, 0]
        (g,) = torch.autograd.grad((s1 ** 2).sum(), xg)
    want = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(d, want.float(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(d.flatten(1).norm(dim=1), torch.ones(2))
    assert all(p.grad is None for p in model.parameters())


def test_pullback_edit_moves_x_t_by_alpha_noise_norms_and_records_dh(tiny_prior):
    from diffloss.prior.sampling import ddim_schedule, spaced_diffusion

    model, diffusion = tiny_prior
    spaced = spaced_diffusion(diffusion, ddim_schedule(300, 3, 1000))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).repeat_interleave(3, dim=0)
    alpha = torch.tensor([0.0, 0.1, 0.3, 0.0, 0.2, 0.4])
    edit = H.make_edit(alpha, "pullback")
    assert isinstance(edit, H.PullbackEdit) and edit.ref.tolist() == [0, 0, 0, 3, 3, 3]
    moved = edit.move(model, spaced, x, 2)
    sigma = math.sqrt(1 - float(spaced.alphas_cumprod[2]))
    step = (moved - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(step, alpha * sigma * math.sqrt(3 * 32 * 32), rtol=1e-4, atol=1e-5)
    d = H.pullback_direction(model, spaced, x[[0, 3]], 2)
    torch.testing.assert_close((moved[2] - x[2]) / step[2], d[0], rtol=1e-4, atol=1e-5)   # its image's direction
    assert edit.calls == 0                                       # the probing forward is not recorded
    edit.active = True
    h = torch.randn(6, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    assert edit(h) is h                                          # h itself is not edited
    ref = h[[0, 0, 0, 3, 3, 3]]
    want = (h - ref).flatten(1).norm(dim=1).double()
    torch.testing.assert_close(edit.dh_norm, want)
    torch.testing.assert_close(edit.dh_rel, want / ref.flatten(1).norm(dim=1).double())
    with pytest.raises(ValueError, match="unperturbed"):
        H.PullbackEdit(torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="PullbackEdit"):
        H.PerturbationEdit(torch.zeros(2), "pullback")


def test_pixel_change_hand_values():
    g = torch.zeros(1, 3, 3, 2, 2)
    g[0, 1] += 0.5                                               # level 1: every pixel +0.5
    g[0, 2, 0, 0, 0] = 1.0                                       # level 2: one of 12 values +1
    torch.testing.assert_close(H.pixel_change(g), torch.tensor([[127.5, 255 / 12]], dtype=torch.float64))
    with pytest.raises(ValueError, match="1\\+K"):
        H.pixel_change(torch.zeros(1, 1, 3, 2, 2))


def test_classifier_features_are_the_heads_input_at_the_checkpoints_size(tiny_ckpts):
    """Penultimate features = the input of the classification head, logits = head(features), predictions their
    argmax; images are resized and centre-cropped as the checkpoint scores test images."""
    from classifiers import load_classifier

    clf = H.load_classifier_features(tiny_ckpts["resnet-mini"])
    model, info = load_classifier(tiny_ckpts["resnet-mini"])
    assert not any(p.requires_grad for p in clf.parameters())
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    feats, logits = clf.features_and_logits(x)
    assert feats.shape == (3, model.fc.in_features)
    torch.testing.assert_close(logits, model.fc(feats))
    pre = info["preprocess"]
    r, s = pre["resize"], pre["img_size"]
    big = torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    top = (r - s) // 2
    norm = (big[..., top:top + s, top:top + s] - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / \
        torch.tensor(pre["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(logits, model(norm))
    assert torch.equal(clf.predict(x), logits.argmax(1)) and torch.equal(clf(x), feats)


class _FakeClassifier(torch.nn.Module):
    """predict: a fixed class per sample position (``per_level``: sample j of an image -> j, so every level
    differs from level 0; else 0 for all)."""

    def __init__(self, levels: int, per_level: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.levels, self.per_level = levels, per_level

    def predict(self, images):
        n = images.shape[0]
        return torch.arange(n) % (self.levels + 1) if self.per_level else torch.zeros(n, dtype=torch.long)


def test_study_records_label_flips_only_with_a_classifier(tiny_prior, extractor, mini_root):
    model, diffusion = tiny_prior
    cfg = _config(images_per_group=2, grid_images=0, steps=2)
    plain = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, progress=False)
    assert all(math.isnan(r["label_flip"]) for r in plain.rows) and all(r["pixel_change"] > 0 for r in plain.rows)
    flips = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, progress=False,
                               classifier=_FakeClassifier(2, per_level=True))
    assert {r["label_flip"] for r in flips.rows} == {1.0}
    none = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, progress=False,
                              classifier=_FakeClassifier(2, per_level=False))
    assert {r["label_flip"] for r in none.rows} == {0.0}
    assert [r["distance"] for r in none.rows] == [r["distance"] for r in plain.rows]
    assert {s["flip_rate"] for s in H.summarize_distances(flips.rows)} == {1.0}


def test_progress_ticks_at_every_ddim_step(tiny_prior, extractor, mini_root, monkeypatch):
    """The bar moves at every DDIM step (a share of the batch's images), not once per batch."""
    import tqdm.auto

    ticks = []

    class Bar:
        def __init__(self, *a, total=0, initial=0, **k):
            self.n = initial

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def update(self, k):
            ticks.append(k)

        def refresh(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    model, diffusion = tiny_prior
    H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor,
                       _config(images_per_group=3, batch_images=2, grid_images=0, steps=3), progress=True)
    assert ticks == pytest.approx([2 / 3] * 3 + [1 / 3] * 3)    # 2 batches (2 + 1 images) x 3 steps


def test_batch_svd_works_when_the_last_batch_holds_one_image(tmp_path, tiny_prior, extractor, mini_root):
    """3 images at --batch-size 2: the last image joins the batch before it (its direction needs two images);
    an interrupted run recomputes that whole batch, and its numbers equal an uninterrupted run's."""
    import analysis.hspace.study as S

    model, diffusion = tiny_prior
    cfg = _config(images_per_group=3, batch_images=2, grid_images=0, svd_mode="batch-svd")
    whole = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, out=tmp_path, progress=False)
    assert len(whole.rows) == 3 * 2 and all(r["dh_norm"] > 0 for r in whole.rows)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    first = whole.rows[0]["image_id"]
    manifest["done"]["clean"] = {first: manifest["done"]["clean"][first]}   # as if stopped after one image
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    batches = []
    real = S._study_batch

    def record(model, spaced, extractor, batch, *a, **k):
        batches.append([it.key for _, it in batch])
        return real(model, spaced, extractor, batch, *a, **k)

    S._study_batch, saved = record, S._study_batch
    try:
        again = H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor, cfg, out=tmp_path,
                                   progress=False)
    finally:
        S._study_batch = saved
    assert batches == [[r["image_id"] for r in whole.rows[::2]]]    # one batch of all 3, the finished one too
    assert _same(again.rows, whole.rows)
    with pytest.raises(ValueError, match="at least 2 images per group"):
        H.run_hspace_study({"clean": mini_root}, model, diffusion, extractor,
                           _config(images_per_group=1, batch_images=2, svd_mode="batch-svd"), progress=False)


def test_calibration_rows_and_their_controls(tiny_prior, mini_root):
    """A row of the calibration table per setting: zero-h replaces h by zeros (||dh|| / ||h|| = 1), the random
    control moves x_t0 as far as pullback does but along a random direction, the targets are read as documented."""
    from analysis.hspace.calibrate import CALIBRATION_GRID, CONTROLS, TARGETS, calibrate_edit
    from cubdata import load_square_tensor, read_cub

    model, diffusion = tiny_prior
    idx = read_cub(mini_root)
    recs = idx.split("train")[:3]
    imgs = torch.stack([load_square_tensor(idx.image_path(r), 32) for r in recs])
    labels, keys = torch.tensor([r.label for r in recs]), [str(r.image_id) for r in recs]
    flips = _FakeClassifier(1, per_level=True)                  # level 1 always "differs": flip rate 1
    rows = [calibrate_edit(model, diffusion, flips, imgs, labels, keys, dict(edit=e, t0=300, steps=2, t_edit=t, alpha=a),
                           batch_images=2)
            for e, t, a in (("zero-h", 0, 1.0), ("sample", 0, 0.5), ("pullback", 300, 0.2), ("random", 300, 0.2))]
    zero, sample, pull, rand = rows
    assert zero["dh_rel"] == 1.0 and 0 < sample["dh_rel"] < 0.5 and pull["dh_rel"] > 0 and rand["dh_rel"] > 0
    assert all(r["flip_rate"] == 1.0 and r["n"] == 3 and r["pixel_change"] > 0 for r in rows)
    assert all(r["meets_targets"] == (r["pixel_change"] >= TARGETS["pixel_change"]) for r in rows)
    assert {r["edit"] for r in CALIBRATION_GRID} == {*H.SVD_MODES, *CONTROLS}


# ------------------------------------------------------------------------------------------------ multiple tests
def test_benjamini_hochberg_hand_values():
    from analysis.stats import benjamini_hochberg_adjust

    # sorted 0.005, 0.01, 0.03, 0.04 -> 4p/i = 0.02, 0.02, 0.04, 0.04 (already monotone)
    assert benjamini_hochberg_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # step-up: 3 * 0.04 / 1 = 0.12, 3 * 0.05 / 2 = 0.075, 3 * 0.9 / 3 = 0.9: the second pulls the first down
    assert benjamini_hochberg_adjust([0.04, 0.05, 0.9]) == pytest.approx([0.075, 0.075, 0.9])
    assert benjamini_hochberg_adjust([]) == []


def test_holm_over_all_tests_of_a_study_bh_as_an_option():
    tests = [{"p_value": p} for p in (0.01, 0.04, float("nan"), 0.03, 0.005)]
    holm = H.adjust_study_p_values(tests)
    assert [t["p_adjust"] for t in holm] == ["holm"] * 5
    got = [t["p_adjusted"] for t in holm]
    assert math.isnan(got[2]) and [got[i] for i in (0, 1, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    bh = H.adjust_study_p_values(tests, "bh")
    assert [bh[i]["p_adjusted"] for i in (0, 1, 3, 4)] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert [t["p_adjusted"] for t in H.adjust_study_p_values(tests, "none")][:2] == [0.01, 0.04]
    with pytest.raises(ValueError, match="holm, bh, none"):
        H.adjust_study_p_values(tests, "bonferroni")
    rows = []                                                   # 8 images, clean moves more on every one
    for g, shift in (("clean", 1.0), ("degraded", 0.0)):
        for i in range(8):
            for level in (1, 2):
                d = level * (i + shift * (i + 1))
                rows.append({"group": g, "image_id": str(i), "level": level, "distance": d, "cosine_distance": d,
                             "relative_distance": d, "pixel_change": d, "label_flip": float(g == "clean")})
    raw = H.group_tests(rows, p_adjust="none")
    holm_rows = H.group_tests(rows)                             # the whole study is one family
    from analysis.stats import holm_adjust

    assert len(raw) == 2 * 5 and raw[0]["p_value"] == pytest.approx(2 / 2 ** 8)
    assert [t["p_adjusted"] for t in holm_rows] == pytest.approx(holm_adjust([t["p_value"] for t in raw]))
    assert holm_rows[0]["p_adjusted"] == pytest.approx(10 * 2 / 2 ** 8)   # not per level (5) or per metric
    assert {t["p_adjust"] for t in H.group_tests(rows, p_adjust="bh")} == {"bh"}


def test_flip_tests_are_mcnemar_on_the_same_images():
    rows = []
    for g, flips in (("clean", [1, 1, 1, 1, 1, 0]), ("degraded", [0, 0, 0, 0, 0, 0])):
        for i, f in enumerate(flips):
            rows.append({"group": g, "image_id": str(i), "level": 1, "label_flip": float(f)})
    (t,) = H.flip_tests(rows)
    assert (t["test"], t["statistic"], t["n_pairs"]) == ("mcnemar", 5.0, 6)   # 5 flipped in clean only
    assert t["p_value"] == pytest.approx(2 / 2 ** 5)                            # exact: 2 * (1/2)^5
    assert t["mean_a"] == pytest.approx(5 / 6) and t["mean_b"] == 0.0
    (f,) = H.flip_tests(rows, paired=False)                                     # Fisher: 5/6 vs 0/6
    assert f["test"] == "fisher" and f["p_value"] == pytest.approx(0.015151515, rel=1e-6)
    assert H.flip_tests([dict(r, label_flip=float("nan")) for r in rows]) == []


def test_paper_ordering_reads_the_tests_in_the_papers_direction():
    tests = [{"level": 4, "metric": "distance", "group_a": "degraded", "group_b": "clean", "mean_a": 1.0,
              "mean_b": 3.0, "p_adjusted": 0.001, "p_adjust": "holm"},
             {"level": 4, "metric": "distance", "group_a": "w/o DiffLoss", "group_b": "w/ DiffLoss", "mean_a": 2.0,
              "mean_b": 1.0, "p_adjusted": 0.01, "p_adjust": "holm"},
             {"level": 4, "metric": "distance", "group_a": "clean", "group_b": "w/o DiffLoss", "mean_a": 3.0,
              "mean_b": 2.0, "p_adjusted": 0.2, "p_adjust": "holm"}]
    got = {(o["more"], o["less"]): o["verdict"] for o in H.paper_ordering(tests, 4)}
    assert got == {("clean", "degraded"): "holds", ("w/ DiffLoss", "w/o DiffLoss"): "reversed",
                   ("clean", "w/o DiffLoss"): "not significant"}
    assert H.paper_ordering(tests, 3) == []


# ------------------------------------------------------------------------------------------------ CLI / errors
def test_paper_mode_missing_prior_errors(tmp_path, mini_root, capsys):
    with pytest.raises(ValueError, match="256x256_diffusion_uncond.pt"):
        H.run(tmp_path, groups={"clean": mini_root})  # the default prior, builtin, is quick mode's
    rc = H.main(["--prior", str(tmp_path / "256x256_diffusion_uncond.pt"), "--set", f"clean={mini_root}",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "prior checkpoint not found" in err and "--prior PATH" in err
    assert "openaipublic" in err
    rc = H.main(["--set", f"clean={mini_root}", "--out", str(tmp_path / "o")])  # --prior left at builtin
    err = capsys.readouterr().err
    assert rc == 2 and "paper mode needs --prior PATH" in err and "256x256_diffusion_uncond.pt" in err
    assert not (tmp_path / "o").exists()


def test_paper_mode_missing_resnet_weights_errors(tmp_path, mini_root, capsys, monkeypatch):
    prior = tmp_path / "256x256_diffusion_uncond.pt"
    prior.write_bytes(b"never loaded: the weights check comes first")
    rc = H.main(["--prior", str(prior), "--set", f"clean={mini_root}", "--weights", str(tmp_path / "r50.pth"),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "resnet50-0676ba61.pth" in err and "--weights PATH" in err
    # the default ("imagenet" from the torch hub cache): offline and not cached -> clear error, no download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    rc = H.main(["--prior", str(prior), "--set", f"clean={mini_root}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "resnet50" in err and "--weights PATH" in err


PAPER_ARGS = ["--prior", "random", "--prior-config", "tiny", "--weights", "none", "--feature-size", "32",
              "--steps", "2", "--t0", "300", "--t-edit", "100", "--levels", "2", "--images-per-group", "2",
              "--grid-images", "0", "--device", "cpu", "--no-progress"]


def test_cli_refuses_a_foreign_folder_and_another_study_unless_overwrite(tmp_path, mini_root, capsys):
    """--out holding someone else's files, or another study, is refused in one line (nothing touched); the same
    study resumes; --overwrite starts the other study again."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "distances.csv").write_text("mine")                 # one of our names, but no config.json: foreign?
    (out / "notes.txt").write_text("mine")
    argv = [*PAPER_ARGS, "--set", f"clean={mini_root}", "--out", str(out)]
    rc = H.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "notes.txt" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "distances.csv").read_text() == "mine" and not (out / "config.json").exists()
    (out / "notes.txt").unlink()
    (out / "distances.csv").unlink()
    assert H.main(argv) == 0
    first = (out / "distances.csv").read_text()
    capsys.readouterr()
    assert H.main(argv) == 0                                    # the same study: resumes, same outputs
    assert (out / "distances.csv").read_text() == first
    replay = tmp_path / "replay"                                # --config replays it, protocol included
    assert H.main(["--config", str(out / "config.json"), "--out", str(replay), "--no-progress"]) == 0
    assert (replay / "distances.csv").read_text() == first.replace(str(out), str(replay))
    other = [a if a != "2" else "3" for a in argv]              # another protocol (steps, levels, images)
    rc = H.main(other)
    err = capsys.readouterr().err
    assert rc == 2 and "other settings" in err and (out / "distances.csv").read_text() == first
    assert H.main([*other, "--overwrite"]) == 0
    assert (out / "distances.csv").read_text() != first
    assert json.loads((out / "manifest.json").read_text())["settings"]["protocol"]["steps"] == 3


@pytest.mark.parametrize("bad, needle", [(["--t0", "5000"], "--t0 must be in 1..999"),
                                         (["--steps", "0"], "--steps must be a positive integer"),
                                         (["--steps", "600", "--t0", "500"], "--steps must be in 1..t0+1"),
                                         (["--t-edit", "-1"], "--t-edit must be an integer >= 0"),
                                         (["--batch-size", "0"], "--batch-size must be a positive integer"),
                                         (["--grid-images", "-2"], "--grid-images must be an integer >= 0"),
                                         (["--feature-size", "0"], "--feature-size must be a positive integer"),
                                         (["--p-adjust", "bonferroni"], "invalid choice")])
def test_quick_checks_every_argument_before_building_anything(bad, needle, tmp_path, capsys, monkeypatch):
    """A bad argument is one line on stderr before the quick groups (data/subset-...), the demo networks or the
    run folder are made."""
    import analysis.demo as demo
    import analysis.demo.hspace_quick as hq

    def forbidden(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(hq, "quick_groups", forbidden)
    monkeypatch.setattr(demo, "demo_classifiers", forbidden)
    out = tmp_path / "q"
    try:
        rc = H.main(["--quick", "--out", str(out), "--no-progress", *bad])
    except SystemExit as exit_:                                 # argparse's own refusal (choices)
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and not out.exists()


def test_cli_parser_flags():
    p = H.build_parser()
    args = p.parse_args(["--quick", "--alphas", "1,2,3", "--set", "a=x", "--set", "w/ DiffLoss=y"])
    cfg = config_from_args(args)
    assert cfg.alphas == (1.0, 2.0, 3.0) and cfg.steps == H.QUICK_DEFAULTS["steps"]
    from analysis.hspace.cli import HSpaceRunOptions
    from runkit.options import config_from_args as options_from_args

    opts = options_from_args(HSpaceRunOptions, args)
    assert opts.groups() == {"a": "x", "w/ DiffLoss": "y"}
    assert config_from_args(p.parse_args([])).steps == H.HSpaceConfig().steps
    with pytest.raises(ValueError, match="expected LABEL=ROOT"):
        options_from_args(HSpaceRunOptions, p.parse_args(["--set", "novalue"])).groups()
    with pytest.raises(SystemExit):
        p.parse_args(["--svd-mode", "nope"])
    assert p.parse_args([]).test == "wilcoxon" and p.parse_args(["--test", "mann-whitney"]).test == "mann-whitney"
    with pytest.raises(SystemExit):
        p.parse_args(["--test", "t-test"])


@pytest.mark.slow
def test_quick_cli_under_three_minutes_from_a_warm_demo_cache(tmp_path, capsys):
    """The documented quick run (issue 16's bar): the demo networks trained first (the warm cache), then
    ``--quick`` in at most 3 minutes with a trained feature network, >= 40 images per group, four groups,
    Holm-corrected paired tests, and a top level that moves the clean generations by >= 8/255 on average."""
    import os
    import time

    from analysis.demo import demo_classifiers, ensure_demo_restorers

    demo_classifiers(archs=("resnet-mini",), progress=False)
    ensure_demo_restorers(corruptions=("lowlight",), severity=3)
    t = time.perf_counter()
    rc = H.main(["--quick", "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
    seconds = time.perf_counter() - t
    assert rc == 0, capsys.readouterr().err
    rows = H.read_distances(tmp_path)
    n_img, K = H.QUICK_DEFAULTS["images_per_group"], 4
    assert n_img >= 40
    assert [g for g in dict.fromkeys(r["group"] for r in rows)] == ["clean", "degraded", "w/o DiffLoss", "w/ DiffLoss"]
    assert len(rows) == 4 * n_img * K
    info = json.loads((tmp_path / "summary.json").read_text())
    assert "classifier penultimate features" in info["provenance"]["features"]
    assert info["p_adjust"] == "holm" and info["tests_in_family"] == 6 * K * 5   # pairs x levels x metrics
    top = {s["group"]: s for s in info["summary"] if s["level"] == K}
    assert top["clean"]["pixel_change_mean"] >= 8.0
    assert "s/image" in capsys.readouterr().out
    assert (tmp_path / "flip_rates.png").is_file() and (tmp_path / "grid.png").is_file()
    # docs/hspace.md's table of the quick run is what this run writes (convention 17)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "hspace.md").read_text()
    names = {"degraded": "degraded (low light 3)"}
    for row in info["summary"]:
        line = (f"| {names.get(row['group'], row['group'])} | {row['level']} | {row['alpha']:g} | {row['mean']:.2f} | "
                f"{row['pixel_change_mean']:.1f} | {row['flip_rate']:.0%} [{100 * row['flip_ci_low']:.0f}, "
                f"{100 * row['flip_ci_high']:.0f}] |")
        assert line in docs, line
    assert seconds < 180, f"quick mode took {seconds:.0f} s (load {os.getloadavg()}, {os.cpu_count()} CPUs)"


@pytest.mark.slow
def test_calibration_table_in_the_docs_is_what_the_command_writes(tmp_path):
    """docs/hspace.md's calibration table is `python -m analysis.hspace.calibrate`'s calibration.md, the timing
    column aside (convention 17)."""
    from analysis.hspace.calibrate import main as calibrate

    assert calibrate(["--out", str(tmp_path), "--no-progress"]) == 0
    docs = (Path(__file__).resolve().parents[1] / "docs" / "hspace.md").read_text()

    def rows(text):                                             # the 13-column rows, without the timing
        return [line.rsplit("|", 2)[0] for line in text.splitlines() if line.count("|") == 14
                and line.startswith(("| sample |", "| batch-svd |", "| zero-h |", "| pullback |", "| random |"))]

    written = rows((tmp_path / "calibration.md").read_text())
    assert len(written) == 24 and written == rows(docs)


# ------------------------------------------------------------------------------------------------ plots
def test_plot_functions_take_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.hspace.plots import (plot_distance_histograms, plot_group_histogram, plot_histogram_overlay,
                                      plot_level_grid, save_figure)

    from drawn_figures import (assert_grid_drawn, assert_histograms_drawn, assert_overlay_drawn, describe_axes,
                               describe_figure)

    fig, ax = plt.subplots()
    assert plot_group_histogram(_rows(), "clean", ax=ax) is ax
    drawn = describe_axes(ax)                                   # 2 levels x 20 bins, 3 images each
    assert [len(b["heights"]) for b in drawn["bar_groups"]] == [20, 20]
    assert [sum(b["heights"]) for b in drawn["bar_groups"]] == [3, 3]
    assert drawn["legend"] == ["level \u2460", "level \u2461"]
    fig_o, ax_o = plt.subplots()
    assert plot_histogram_overlay(_rows(), ax=ax_o, level=2) is ax_o
    assert_overlay_drawn(describe_figure(fig_o), {"clean": 3, "degraded": 3})
    assert_histograms_drawn(describe_figure(plot_distance_histograms(_rows())), {"clean": 3, "degraded": 3}, 2)
    with pytest.raises(ValueError, match="groups present"):
        plot_group_histogram(_rows(), "nope", ax=ax)
    cos_rows = [dict(r, cosine_distance=0.01 * r["distance"]) for r in _rows()]
    fig_c, ax_c = plt.subplots()
    plot_histogram_overlay(cos_rows, ax=ax_c, level=2, metric="cosine_distance")
    assert "cosine distance" in ax_c.get_xlabel()
    assert ax_c.get_xlim()[1] < 1.0                             # the cosine values (<= 0.12), not the L2 ones
    with pytest.raises(ValueError, match="no 'relative_distance'"):
        plot_group_histogram([{k: v for k, v in r.items() if k != "relative_distance"} for r in _rows()], "clean",
                             ax=ax, metric="relative_distance")
    img = np.zeros((8, 8, 3), np.uint8)
    grid = {"clean": [("1", img, [img + 1, img + 2, img + 3])], "fog": [("1", img + 4, [img + 5, img, img + 6])]}
    g = plot_level_grid(grid, alphas=(1.0, 2.0))
    assert_grid_drawn(describe_figure(g), grid, levels=2)
    assert len(describe_figure(plot_level_grid(grid, max_images=1, show_input=False))["axes"]) == 2 * 3
    paths = save_figure(g, tmp_path / "grid")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    plt.close("all")


def _table_rows():
    rows = []
    for clf in ("vgg16", "resnet50"):
        rows.append(dict(config="clean", degradation="clean", classifier=clf, n=60, correct=50, top1=83.3,
                         ci_low=72.0, ci_high=90.7))
        for deg in ("fog", "lowlight"):
            for i, cfg in enumerate(("degraded", "w/o DiffLoss", "w/ DiffLoss")):
                t = 30.0 + 10 * i
                rows.append(dict(config=cfg, degradation=deg, classifier=clf, n=60, correct=int(0.6 * t),
                                 top1=t, ci_low=t - 5, ci_high=t + 6))
    return rows


def test_table2_bars():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.table2_plot import plot_table2_bars

    fig, ax = plt.subplots()
    assert plot_table2_bars(_table_rows(), ax=ax, classifier="resnet50") is ax
    heights = sorted(round(b.get_height(), 3) for b in ax.patches if hasattr(b, "get_height") and b.get_width() < 1)
    assert heights == [30.0, 30.0, 40.0, 40.0, 50.0, 50.0]        # 2 degradations x 3 configs
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fog", "lowlight"]
    assert "clean" in [t.get_text() for t in ax.get_legend().get_texts()]
    fig2, ax2 = plt.subplots()
    plot_table2_bars(_table_rows(), ax=ax2)
    assert len(ax2.get_xticklabels()) == 4                      # (fog, lowlight) x (vgg16, resnet50)
    with pytest.raises(ValueError, match="present"):
        plot_table2_bars(_table_rows(), ax=ax2, classifier="alexnet")
    plt.close("all")


# ------------------------------------------------------------------------------------------------ docs
def test_docs_blocks_are_what_the_record_renders_to():
    """docs/hspace.md's and the README's generated h-space blocks equal what docs/figures/hspace-quick.json
    renders to (the record `python -m analysis.hspace.docs` wrote from the quick runs; rerunning them is the slow
    tests' job)."""
    from analysis.hspace import docs

    record = docs.read_record()
    for path, text in docs.rendered_files(record).items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run {docs.COMMAND}"
    assert record["images_per_group"] >= 40 and record["p_adjust"] == "holm"
    assert [r["group"] for r in record["summary"]][::4] == record["groups"] == \
           ["clean", "degraded", "w/o DiffLoss", "w/ DiffLoss"]


def test_prose_quotes_the_record():
    """Every number the README's and docs/hspace.md's prose quote about the quick runs comes from the record."""
    from analysis.hspace import docs

    r = docs.read_record()
    top = {s["group"]: s for s in r["summary"] if s["level"] == r["top_level"]}
    test = {(t["metric"], t["group_a"], t["group_b"]): t for t in r["top_tests"]}
    probe = {(t["t"], t["features_a"], t["group_a"], t["features_b"], t["group_b"]): t["p_holm"]
             for t in r["probe_tests"]}
    c, d, wo, w = (top[g] for g in r["groups"])
    both = [f"label flips {c['flip_rate']:.0%} vs {d['flip_rate']:.0%}",
            f"feature distance {c['mean']:.2f} vs {d['mean']:.2f}, Holm p = "
            f"{test['distance', 'clean', 'degraded']['p_adjusted']:.1g}",
            f"({w['flip_rate']:.0%} vs {wo['flip_rate']:.0%} flips, feature distance {w['mean']:.2f} vs "
            f"{wo['mean']:.2f}, Holm p = {test['distance', 'w/o DiffLoss', 'w/ DiffLoss']['p_adjusted']:.2g})",
            f"p = {probe[50, 'h', 'clean', 'x_t pixels', 'clean']:.2g}"]
    hspace_md = [f"raw p = {test['distance', 'w/o DiffLoss', 'w/ DiffLoss']['p_value']:.1g}",
                 f"paired p = {probe[50, 'h', 'clean', 'x_t pixels', 'clean']:.2g}",
                 f"p = {probe[50, 'h', 'w/o DiffLoss', 'x_t pixels', 'w/o DiffLoss']:.1g} and "
                 f"{probe[50, 'h', 'w/ DiffLoss', 'x_t pixels', 'w/ DiffLoss']:.1g}"]
    root = Path(__file__).resolve().parents[1]
    for name, numbers in (("README.md", both), ("docs/hspace.md", hspace_md)):
        text = " ".join((root / name).read_text(encoding="utf-8").split())
        missing = [n for n in numbers if n not in text]
        assert not missing, f"{name} does not quote {missing} from {docs.RECORD.name}"
