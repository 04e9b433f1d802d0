"""Image-quality metrics (analysis.quality): PSNR/SSIM against hand-computed values, file pairing, the
report files, and the offline behaviour of LPIPS/FID (clear errors; local weight files work)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import quality
from analysis.quality import evaluate_quality, format_markdown, match_images, psnr, ssim


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_psnr_of_a_constant_offset_is_10_log10_one_over_mse():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 17, 23, generator=g) * 0.8
    for delta in (0.01, 0.1):
        expected = 10 * math.log10(1 / delta**2)  # MSE = delta^2 for a constant offset
        got = psnr(gt + delta, gt)
        assert got.shape == (2,)
        assert got.tolist() == pytest.approx([expected, expected], abs=1e-4)


def test_psnr_of_random_images_and_of_identical_ones():
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 3, 9, 14)), rng.random((2, 3, 9, 14))
    expected = [10 * math.log10(1 / np.mean((a[i] - b[i]) ** 2)) for i in range(2)]
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)).tolist() == pytest.approx(expected, abs=1e-5)
    assert psnr(torch.from_numpy(a), torch.from_numpy(a)).tolist() == [math.inf, math.inf]


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one ``C x H x W`` float64 pair, written from Wang et al. (2004) with SciPy: Gaussian window sigma
    1.5 cut at radius 5 (11x11), mirrored borders (torch's 'reflect'), C1 = 0.01^2, C2 = 0.03^2, map averaged."""
    from scipy.ndimage import gaussian_filter

    def blur(a):
        return gaussian_filter(a, sigma=(0, 1.5, 1.5), truncate=5 / 1.5, mode="mirror")

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def test_ssim_equals_a_hand_computation():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:30, 0:41] / 40.0
    smooth = np.stack([0.5 + 0.02 * np.sin(3 * xx + c) * yy for c in range(3)])  # nearly flat: float32 cancels here
    pred = np.stack([rng.random((3, 30, 41)), np.clip(smooth + rng.normal(0, 0.003, smooth.shape), 0, 1)])
    target = np.stack([np.clip(0.6 * pred[0] + 0.4 * rng.random((3, 30, 41)), 0, 1), smooth])
    expected = [_ssim_by_hand(pred[i], target[i]) for i in range(2)]
    got = ssim(torch.from_numpy(pred).float(), torch.from_numpy(target).float())
    assert got.shape == (2,) and got.dtype == torch.float32
    # the float32 inputs are the float64 arrays rounded; SSIM moves by far less than 1e-6 for that
    assert got.tolist() == pytest.approx(expected, rel=0, abs=1e-6)
    assert ssim(torch.from_numpy(pred[1:]).float(), torch.from_numpy(target[1:]).float()).item() == got[1].item()


def test_ssim_of_constant_images_matches_the_formula():
    # constant images: both variances and the covariance vanish, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.5, (0.01 * 1.0) ** 2
    x, y = torch.full((1, 3, 32, 32), a), torch.full((1, 3, 32, 32), b)
    assert float(ssim(x, y)[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)
    z = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert float(ssim(z, z)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(z, 1 - z)[0]) < 0


def test_metric_input_validation():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(torch.full((1, 3, 8, 8), 2.0), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(TypeError, match="NCHW"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="float"):
        ssim(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 6x6"):
        ssim(torch.zeros(1, 3, 5, 40), torch.zeros(1, 3, 5, 40))


def test_ssim_equals_torchmetrics_float64():
    # torchmetrics' definition (reflect padding, its window), computed exactly; in float32 it is off by ~1e-5
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(2)
    for shape in [(2, 3, 40, 53), (1, 3, 6, 7), (3, 3, 64, 33)]:
        x = torch.rand(shape, generator=g)
        y = (0.7 * x + 0.3 * torch.rand(shape, generator=g)).clamp(0, 1)
        ref = structural_similarity_index_measure(x.double(), y.double(), data_range=1.0, reduction="none").float()
        assert torch.allclose(ssim(x, y), ref, rtol=0, atol=1e-6)


def test_quality_and_training_validation_share_one_psnr_and_ssim():
    from restoration import metrics

    assert quality.psnr is metrics.psnr and quality.ssim is metrics.ssim
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    y = x.flip(-1)
    p, s = metrics.psnr_ssim(x, y)
    assert torch.equal(p, psnr(x, y)) and torch.equal(s, ssim(x, y))


@pytest.fixture()
def folders(tmp_path):
    """gt: a CUB-like root with JPEG names; pred: PNGs offset by +5 (so PSNR = 20 log10(255 / 5))."""
    rng = np.random.default_rng(0)
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    (gt_root / "images.txt").parent.mkdir(parents=True)
    (gt_root / "images.txt").write_text("")
    for i, cls in enumerate(["001.A", "001.A", "002.B"]):
        arr = rng.integers(20, 200, (40 + i, 50, 3), dtype=np.uint8)
        _save(gt_root / "images" / cls / f"x{i}.png", arr)  # lossless, so the offset is exact
        _save(pred_root / cls / f"x{i}.png", arr + 5)
    _save(gt_root / "images" / "002.B" / "extra.png", np.zeros((48, 48, 3), np.uint8))  # gt extras are fine
    return pred_root, gt_root


def test_evaluate_quality_on_folders(folders):
    pred, gt = folders
    res = evaluate_quality(pred, gt, "psnr,ssim", progress=False)
    expected = 20 * math.log10(255 / 5)
    assert res["summary"]["n"] == 3
    assert [r["image"] for r in res["per_image"]] == ["001.A/x0", "001.A/x1", "002.B/x2"]
    assert all(r["psnr"] == pytest.approx(expected, abs=1e-4) for r in res["per_image"])
    assert res["summary"]["psnr"] == pytest.approx(expected, abs=1e-4)
    assert 0 < res["summary"]["ssim"] < 1


def test_batched_scores_equal_per_image_torchmetrics_on_mixed_sizes(tmp_path):
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    rng = np.random.default_rng(1)
    sizes = [(30, 40), (30, 40), (41, 29), (30, 40), (30, 40), (30, 40), (41, 29), (41, 29), (16, 16)]
    expected = {}
    for i, (h, w) in enumerate(sizes):  # runs of equal sizes, split by batch_size 2 and by size changes
        gt = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pred = np.clip(gt.astype(int) + rng.integers(-30, 31, gt.shape), 0, 255).astype(np.uint8)
        _save(tmp_path / "gt" / f"{i:02d}.png", gt)
        _save(tmp_path / "pred" / f"{i:02d}.png", pred)
        # the former per-image path: uint8 -> float32 / 255 -> float64 -> torchmetrics
        pf, gf = ((torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0).double() for a in (pred, gt))
        expected[f"{i:02d}"] = (
            float(peak_signal_noise_ratio(pf, gf, data_range=1.0, reduction="none", dim=(1, 2, 3)).float()[0]),
            float(structural_similarity_index_measure(pf, gf, data_range=1.0, reduction="none").float()[0]))
    for batch_size in (1, 2, 8):
        rows = evaluate_quality(tmp_path / "pred", tmp_path / "gt", "psnr,ssim", progress=False,
                                batch_size=batch_size)["per_image"]
        assert [r["image"] for r in rows] == sorted(expected)
        for r in rows:
            assert (r["psnr"], r["ssim"]) == pytest.approx(expected[r["image"]], rel=0, abs=1e-6), (batch_size, r)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_quality(tmp_path / "pred", tmp_path / "gt", "psnr", progress=False, batch_size=0)


def test_quality_throughput_benchmark_runs_tiny():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "quality_throughput", Path(__file__).resolve().parents[1] / "benchmarks" / "quality_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    old_threads = torch.get_num_threads()
    out = bench.main(["--n-images", "3", "--n-ref", "3", "--threads", "1", "--rounds", "1", "--size", "64x48"])
    assert torch.get_num_threads() == old_threads
    (row,) = out["rows"]
    assert row["toolkit_ms_per_image"] > 0 and row["torchmetrics_f32_ms_per_image"] > 0 and row["cpus"] >= 1
    assert row["ratio"] == pytest.approx(row["torchmetrics_f32_ms_per_image"] / row["toolkit_ms_per_image"])
    assert out["agreement"]["n"] == 3 and out["agreement"]["toolkit_max_abs_diff"] <= 1e-6
    assert 0 < out["agreement"]["torchmetrics_f32_max_abs_diff"] < 1e-3


def test_pairing_errors(folders, tmp_path):
    pred, gt = folders
    _save(pred / "003.C" / "lonely.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="lonely"):
        match_images(pred, gt)
    (pred / "003.C" / "lonely.png").unlink()
    _save(pred / "001.A" / "x0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="original size"):
        evaluate_quality(pred, gt, "psnr", progress=False)
    with pytest.raises(ValueError, match="psnr, ssim, lpips, fid"):
        evaluate_quality(pred, gt, "psnr,niqe", progress=False)


def test_cli_writes_per_image_and_summary(folders, tmp_path, capsys):
    pred, gt = folders
    out = tmp_path / "report"
    assert quality.main(["--set", f"offset={pred}", "--set", f"identical={gt}", "--cub-root", str(gt),
                         "--metrics", "psnr,ssim", "--out", str(out), "--no-progress"]) == 0
    with open(out / "summary.csv") as fh:
        assert fh.readline().strip() == "method,n,psnr,ssim"
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["offset", "identical"]
    assert float(rows[0]["psnr"]) == pytest.approx(20 * math.log10(255 / 5), abs=1e-4)
    assert float(rows[1]["ssim"]) == pytest.approx(1.0)
    with open(out / "per_image.csv") as fh:
        per = list(csv.DictReader(fh))
    assert len(per) == 3 + 4 and list(per[0]) == ["method", "image", "psnr", "ssim"]
    assert [float(r["ssim"]) for r in per[3:]] == [1.0] * 4 and [r["psnr"] for r in per[3:]] == ["inf"] * 4
    md = (out / "summary.md").read_text()
    assert "PSNR ↑" in md and "SSIM ↑" in md and "| offset | 3 |" in md and "**1.0000**" in md
    assert "| identical |" in capsys.readouterr().out


def test_markdown_marks_the_best_per_metric():
    md = format_markdown([{"method": "a", "n": 2, "lpips": 0.3}, {"method": "b", "n": 2, "lpips": 0.1}], ["lpips"])
    assert "LPIPS ↓" in md and "| b | 2 | **0.1000** |" in md


def test_lpips_and_fid_fail_offline_naming_the_file(folders, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    pred, gt = folders
    with pytest.raises(FileNotFoundError) as err:
        evaluate_quality(pred, gt, "psnr,lpips", progress=False)
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and "--lpips-weights" in str(err.value)
    pytest.importorskip("torch_fidelity")
    with pytest.raises(FileNotFoundError) as err:
        evaluate_quality(pred, gt, "fid", progress=False)
    assert quality.FID_WEIGHTS in str(err.value) and "--fid-weights" in str(err.value)


def test_lpips_with_a_local_backbone_file(folders, tmp_path):
    import torchvision

    with torch.device("meta"):  # only the key names and shapes of torchvision's AlexNet (fast)
        meta = torchvision.models.alexnet(weights=None).state_dict()
    g = torch.Generator().manual_seed(0)
    feats = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in meta.items() if k.startswith("features.")}
    path = tmp_path / "alexnet-random.pth"
    torch.save(feats, path)
    model = quality.load_lpips("alex", path)
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert model(x, x, normalize=True).abs().max() < 1e-6
    assert (model(x, x.flip(-1), normalize=True) > 0).all()
    pred, gt = folders
    res = evaluate_quality(pred, gt, "lpips", lpips_weights=path, progress=False)
    assert res["summary"]["lpips"] > 0
    same = evaluate_quality(gt, gt, "lpips", lpips_weights=path, progress=False)
    assert same["summary"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    torch.save({"features.0.weight": feats["features.0.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a torchvision alexnet"):
        quality.load_lpips("alex", tmp_path / "partial.pth")


@pytest.mark.slow
def test_fid_with_a_local_inception_file(folders, tmp_path, monkeypatch):
    """FID plumbing with randomly initialised InceptionV3 weights saved to a local file (about 100 MB)."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as m:  # build torch-fidelity's network without its (downloaded) weights
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / quality.FID_WEIGHTS
    torch.save(net.state_dict(), path)
    pred, gt = folders
    same = evaluate_quality(gt, gt, "fid", fid_weights=path, progress=False)
    assert same["summary"]["n"] == 4 and abs(same["summary"]["fid"]) < 1e-6
    res = evaluate_quality(pred, gt, "psnr,fid", fid_weights=path, progress=False)
    assert math.isfinite(res["summary"]["fid"]) and res["summary"]["fid"] >= -1e-6


# ---------------------------------------------------------------------------------------------- paired comparisons
def _results(**methods):
    """``{method: [run, ...]}`` as `evaluate_quality` returns them, from {method: [{image: psnr}, ...]}."""
    return {name: [{"per_image": [{"image": k, "psnr": v} for k, v in run.items()], "metrics": ["psnr"],
                    "summary": {"n": len(run), "psnr": float(np.mean(list(run.values())))}} for run in runs]
            for name, runs in methods.items()}


def test_paired_rows_against_a_hand_computation():
    from scipy.stats import wilcoxon

    from analysis.stats import bootstrap_ci

    images = [f"i{k}" for k in range(5)]
    a = dict(zip(images, [20.0, 22.0, 25.0, 21.0, 30.0]))
    b = dict(zip(images, [19.0, 22.5, 23.0, 20.0, 26.0]))
    rows = quality.paired_rows(_results(A=[a], B=[b]), [("A", "B")], ["psnr"], n_boot=500, seed=2)
    (r,) = rows
    d = [1.0, -0.5, 2.0, 1.0, 4.0]  # A - B per image
    assert (r["a"], r["b"], r["metric"], r["n"], r["seeds_a"], r["seeds_b"]) == ("A", "B", "psnr", 5, 1, 1)
    assert r["delta"] == pytest.approx(1.5) and r["mean_a"] == pytest.approx(23.6) and r["mean_b"] == pytest.approx(22.1)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(bootstrap_ci(d, n_boot=500, seed=2))
    # |d| ranks: 0.5 -> 1, 1 and 1 -> 2.5 each, 2 -> 4, 4 -> 5; the one negative difference holds rank 1: W = 1
    assert r["test"] == "wilcoxon" and r["statistic"] == 1.0
    assert r["p_value"] == pytest.approx(wilcoxon(d).pvalue) and r["p_adjusted"] == r["p_value"]  # one test
    # an image with infinite PSNR (identical to its ground truth) in one run is left out of that comparison
    a_inf = dict(a, i4=math.inf)
    (r,) = quality.paired_rows(_results(A=[a_inf], B=[b]), [("A", "B")], ["psnr"], n_boot=200)
    assert r["n"] == 4 and r["delta"] == pytest.approx(np.mean(d[:4]))


def test_paired_rows_with_replicates_use_the_two_level_statistics():
    from analysis.stats import paired_delta_with_ci, two_level_t_test

    rng = np.random.default_rng(0)
    images = [f"i{k}" for k in range(12)]
    runs_a = [dict(zip(images, rng.normal(25, 2, 12))) for _ in range(3)]
    run_b = dict(zip(images, rng.normal(24, 2, 12)))
    rows = quality.paired_rows(_results(A=runs_a, B=[run_b], C=[run_b]), [("A", "B"), ("B", "C")], ["psnr"],
                               n_boot=400, seed=1)
    a = np.array([[r[k] for k in images] for r in runs_a])
    b = np.array([[run_b[k] for k in images]])
    first, second = rows
    assert first["seeds_a"] == 3 and first["test"] == "two-level t"
    assert first["delta"] == pytest.approx(a.mean() - b.mean())
    ref = two_level_t_test(b, a)  # its delta is mean(a) - mean(b)
    assert first["statistic"] == pytest.approx(ref["t"]) and first["df"] == pytest.approx(ref["df"])
    ci = paired_delta_with_ci(b, a, n_boot=400, seed=1)
    assert (first["ci_low"], first["ci_high"]) == pytest.approx((ci["ci_low"], ci["ci_high"]))
    # B against an identical C: Delta 0 on every image, CI (0, 0), p = 1; Holm over both rows
    assert second["delta"] == 0.0 and (second["ci_low"], second["ci_high"]) == (0.0, 0.0) and second["p_value"] == 1.0
    assert first["p_adjusted"] == pytest.approx(min(1.0, 2 * first["p_value"]))
    # replicates that agree with each other and with B: nothing varies, no t statistic, p = 1
    flat = quality.compare_methods(np.full((2, 4), 30.0), np.full((1, 4), 30.0), n_boot=50)
    assert flat["test"] == "two-level t" and flat["statistic"] is None and flat["p_value"] == 1.0
    md = quality.format_paired_markdown([{"a": "x", "b": "y", "metric": "psnr", **flat, "p_adjusted": 1.0,
                                          "p_adjust": "holm"}])
    assert "| x | y | PSNR ↑ | 4 | 2 v 1 | +0.00 [+0.00, +0.00] | two-level t (no variance) | 1 | 1 |" in md


@pytest.fixture()
def three_methods(folders, tmp_path):
    """folders' +5 PNGs beside a +10 copy (PSNR 20 log10(255/10) per image: 6.02 dB below the +5 one)."""
    pred, gt = folders
    pred10 = tmp_path / "pred10"
    for p in sorted(pred.rglob("*.png")):
        arr = np.asarray(Image.open(p)).astype(np.int16)
        _save(pred10 / p.relative_to(pred), (arr + 5).astype(np.uint8))
    return pred, pred10, gt


def test_cli_compare_writes_paired_csv_against_hand_values(three_methods, tmp_path, capsys):
    pred, pred10, gt = three_methods
    out = tmp_path / "report"
    argv = ["--set", f"plus5={pred}", "--set", f"plus10={pred10}", "--cub-root", str(gt), "--metrics", "psnr,ssim",
            "--compare", "plus5", "plus10", "--out", str(out), "--no-progress", "--n-boot", "200"]
    assert quality.main(argv) == 0
    with open(out / "paired.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(quality.PAIRED_COLUMNS) and [r["metric"] for r in rows] == ["psnr", "ssim"]
    psnr_row = rows[0]
    gap = 20 * math.log10(2)  # 20 log10(255/5) - 20 log10(255/10) on every image
    assert float(psnr_row["delta"]) == pytest.approx(gap, abs=1e-4)
    assert float(psnr_row["ci_low"]) == pytest.approx(gap, abs=1e-4) and float(psnr_row["ci_high"]) == pytest.approx(gap, abs=1e-4)
    # Wilcoxon, 3 images, all differences positive: exact two-sided p = 2 / 2^3; Holm over the 2 rows
    assert psnr_row["test"] == "wilcoxon" and float(psnr_row["p_value"]) == pytest.approx(0.25)
    assert float(psnr_row["p_adjusted"]) == pytest.approx(min(1, 2 * min(float(r["p_value"]) for r in rows)))
    # the SSIM row: the mean of the per-image differences of per_image.csv
    with open(out / "per_image.csv") as fh:
        per = list(csv.DictReader(fh))
    ssim = {m: [float(r["ssim"]) for r in per if r["method"] == m] for m in ("plus5", "plus10")}
    assert float(rows[1]["delta"]) == pytest.approx(np.mean(np.subtract(ssim["plus5"], ssim["plus10"])), abs=1e-6)
    md = (out / "summary.md").read_text()
    assert "Paired comparisons" in md and "| plus5 | plus10 | PSNR ↑ | 3 | 1 v 1 | +6.02 [+6.02, +6.02] | Wilcoxon |" in md
    assert "Paired comparisons" in capsys.readouterr().out
    # rerun of the same inputs without --compare: its own folder, rewritten, no stale paired.csv
    assert quality.main(argv[:8] + ["--out", str(out), "--no-progress"]) == 0
    assert not (out / "paired.csv").exists() and "Paired" not in (out / "summary.md").read_text()


def test_cli_replicates_are_averaged_and_compared(three_methods, tmp_path):
    pred, pred10, gt = three_methods
    out = tmp_path / "rep"
    assert quality.main(["--set", f"seeds={pred},{pred10}", "--set", f"plus5={pred}", "--cub-root", str(gt),
                         "--metrics", "psnr", "--compare", "seeds", "plus5", "--out", str(out), "--no-progress",
                         "--n-boot", "200"]) == 0
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    p5, p10 = 20 * math.log10(255 / 5), 20 * math.log10(255 / 10)
    assert list(rows[0]) == ["method", "seeds", "n", "psnr"] and rows[0]["seeds"] == "2"
    assert float(rows[0]["psnr"]) == pytest.approx((p5 + p10) / 2, abs=1e-4)
    with open(out / "per_image.csv") as fh:
        per = list(csv.DictReader(fh))
    assert list(per[0]) == ["method", "replicate", "image", "psnr"] and len(per) == 3 * 3
    with open(out / "paired.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["test"] == "two-level t" and (row["seeds_a"], row["seeds_b"]) == ("2", "1")
    assert float(row["delta"]) == pytest.approx((p10 - p5) / 2, abs=1e-4)


def test_cli_refusals_before_any_work(three_methods, tmp_path, capsys, monkeypatch):
    import analysis.quality.cli as qcli

    pred, pred10, gt = three_methods
    monkeypatch.setattr(qcli, "evaluate_quality", lambda *a, **k: pytest.fail("scored before the checks"))
    base = ["--set", f"plus5={pred}", "--set", f"plus10={pred10}", "--cub-root", str(gt), "--no-progress"]

    def one_line(argv):
        assert quality.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "no method named 'w/ DiffLoss'" in one_line(base + ["--compare", "w/ DiffLoss", "plus5", "--out", str(tmp_path / "a")])
    assert "FID is one number per set" in one_line(base + ["--metrics", "fid", "--compare", "plus5", "plus10",
                                                           "--out", str(tmp_path / "a")])
    # a method whose images are another set's
    (pred10 / "002.B" / "x2.png").unlink()
    assert "needs the same images" in one_line(base + ["--compare", "plus5", "plus10", "--out", str(tmp_path / "a")])
    assert "replicates hold different images" in one_line(["--set", f"s={pred},{pred10}", "--cub-root", str(gt),
                                                           "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
    # a foreign --out: refused, nothing overwritten
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.csv").write_text("mine\n")
    err = one_line(["--set", f"plus5={pred}", "--cub-root", str(gt), "--out", str(mine)])
    assert str(mine) in err and "--overwrite" in err and (mine / "summary.csv").read_text() == "mine\n"
    # an unreadable image: one line naming it, before any scoring
    (pred / "001.A" / "x0.png").write_bytes(b"not an image")
    err = one_line(["--set", f"plus5={pred}", "--cub-root", str(gt), "--out", str(tmp_path / "b")])
    assert "cannot decode image" in err and "x0.png" in err
