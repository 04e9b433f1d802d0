"""analysis.hprobe: the linear probe of the class from h (fit, score, paired tests, PCA), the h features of x_t
(noise protocol, resumable extraction) and the command line."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from analysis import hprobe as P

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread for the probe's fits: on a busy 2-core machine two made each fit about 13 times slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def tiny_prior():
    from diffloss import load_prior

    return load_prior("random", init_seed=0)  # the tiny config, 32 px


def _planted(n_per_class: int, classes: int = 5, dim: int = 40, signal: float = 3.0, seed: int = 0):
    """Gaussian features whose first `classes` dimensions carry the class (mean ``signal`` on its own one)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(size=(y.size, dim))
    x[np.arange(y.size), y] += signal
    return x, y


# ------------------------------------------------------------------------------------------------ the probe
def test_probe_recovers_a_planted_class_signal():
    x, y = _planted(30)
    probe, info = P.fit_probe(x, y, seed=0)
    xt, yt = _planted(200, seed=1)                              # a fresh draw: generalisation, not memory
    score = P.score_probe(probe, xt, yt)
    assert score["accuracy"] > 80 and score["ci_low"] > 75      # chance is 20%; Bayes-optimal about 93%
    assert info["n_classes"] == 5 and info["folds"] == 5 and info["C"] in P.PROBE_CS and info["dim"] == 40
    assert score["n"] == 1000 and score["majority"] == 20.0 and score["per_image"].dtype == bool
    assert score["correct"] == int(score["per_image"].sum())


def test_probe_is_at_chance_on_shuffled_labels():
    """Shuffled train labels carry no class: over five shuffles the accuracy on true labels averages chance (one
    shuffle's accuracy varies with the shuffle, beyond the test images' bootstrap interval)."""
    x, y = _planted(30)
    xt, yt = _planted(200, seed=1)
    rng = np.random.default_rng(2)
    acc = []
    for _ in range(5):
        probe, info = P.fit_probe(x, rng.permutation(y), seed=0)
        acc.append(P.score_probe(probe, xt, yt)["accuracy"])
        assert info["cv_accuracy"] < 0.4
    assert max(acc) < 32 and abs(np.mean(acc) - 20) < 4, acc    # chance: 20%; the planted signal gives > 80


def test_probe_checks_its_inputs():
    x, y = _planted(3)
    with pytest.raises(ValueError, match="at least 2 train images"):
        P.fit_probe(x[::3], y[::3])                             # one image per class: no cross-validation
    with pytest.raises(ValueError, match="at least 2 classes"):
        P.fit_probe(x[:3], y[:3])
    with pytest.raises(ValueError, match=r"features \[N, D\] and labels \[N\]"):
        P.fit_probe(x, y[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        P.fit_probe(np.where(x > 2, np.nan, x), y)
    probe, info = P.fit_probe(x, y, folds=5)
    assert info["folds"] == 3                                   # capped at the smallest class's count


def test_paired_probe_tests_are_mcnemar_with_holm():
    from analysis.stats import holm_adjust, mcnemar_test

    a = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 1, 0, 1], dtype=bool)
    rows = P.compare_probes({"a": a, "b": b, "c": a}, [("a", "b"), ("a", "c")])
    assert (rows[0]["b_only_a"], rows[0]["c_only_b"]) == (5, 1)
    assert rows[0]["p_value"] == mcnemar_test(a, b)["p_value"] == pytest.approx(14 / 64)  # 2 * (1 + 6) / 2^6
    assert rows[1]["p_value"] == 1.0
    assert [r["p_holm"] for r in rows] == holm_adjust([r["p_value"] for r in rows])


def test_fit_and_score_fits_on_the_train_images_only(monkeypatch):
    """The probe is fitted on features["train"] alone, at every t and for both representations; the groups are
    only scored."""
    import analysis.hprobe.cli as C

    x, y = _planted(10)
    train = ({"h": np.stack([x, x + 1]), "x_t pixels": np.stack([x[:, :5], x[:, :5]])}, y, [str(i) for i in y])
    xt, yt = _planted(10, seed=3)
    test = ({"h": np.stack([xt, xt]), "x_t pixels": np.stack([xt[:, :5], xt[:, :5]])}, yt, [str(i) for i in yt])
    seen, real = [], C.fit_probe

    def recording(features, labels, **k):
        seen.append((features, labels))
        return real(features, labels, **k)

    monkeypatch.setattr(C, "fit_probe", recording)
    rows = C.fit_and_score({"train": train, "clean": test}, [50, 200], ["clean"])
    assert len(seen) == 2 * 2 and len(rows) == 4
    for feat, lab in seen:                                      # views of the train arrays, never the group's
        assert any(np.shares_memory(feat, train[0][rep]) for rep in ("h", "x_t pixels")) and lab is y
        assert not any(np.shares_memory(feat, test[0][rep]) for rep in ("h", "x_t pixels"))
    assert [(r["t"], r["features"], r["group"]) for r in rows] == [(50, "h", "clean"), (50, "x_t pixels", "clean"),
                                                                    (200, "h", "clean"), (200, "x_t pixels", "clean")]
    tests = C.probe_tests(rows)                                 # h vs pixels per (t, group); no group pairs
    assert [(t["t"], t["features_a"], t["features_b"]) for t in tests] == [(50, "h", "x_t pixels"),
                                                                           (200, "h", "x_t pixels")]


def test_pca_projection_is_fitted_on_the_train_features():
    x, _ = _planted(10)
    shifted = x + 100.0
    proj = P.pca_projection(x, {"same": x, "shifted": shifted})
    np.testing.assert_allclose(proj["same"], proj["train"])
    assert np.abs(proj["shifted"]).mean() > 10 * np.abs(proj["train"]).mean()   # not refitted on the group
    with pytest.raises(ValueError, match="N >= 2"):
        P.pca_projection(x[:1], {})


def test_pca_panels_one_per_group_coloured_by_class():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.hprobe.plots import plot_pca_panels

    pts = {g: np.random.default_rng(i).normal(size=(12, 2)) for i, g in enumerate(("train", "clean", "fog"))}
    labels = {g: np.arange(12) % 4 for g in pts}
    fig = plot_pca_panels(pts, labels, ["train", "clean", "fog"], max_classes=3, class_names={0: "zero"})
    assert [ax.get_title() for ax in fig.axes] == ["train", "clean", "fog"]
    for ax in fig.axes:                                          # 3 classes drawn, 3 images each
        assert [len(c.get_offsets()) for c in ax.collections] == [3, 3, 3]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["zero", "1", "2"]
    with pytest.raises(ValueError, match="no projection"):
        plot_pca_panels(pts, labels, ["nope"])
    plt.close("all")


# ------------------------------------------------------------------------------------------------ h features
def test_h_features_follow_the_diffloss_noise_protocol(tiny_prior, mini_root):
    """h of x_t = the middle block's output at q_sample(x, t, e) with e seeded by the image id: the same image
    under the same id gets the same h in any batch; another id, another noise."""
    from analysis.hspace.groups import image_seed
    from diffloss.prior.hspace import hspace_hook

    model, diffusion = tiny_prior
    items = P.labelled_images(mini_root, "train")[:3]
    from cubdata import load_square_tensor

    imgs = torch.stack([load_square_tensor(it.path, 32) for it in items])
    keys = [it.key for it in items]
    got = P.hspace_features(model, diffusion, imgs, keys, [50, 400], seed=0)
    assert got["h"].shape == (2, 3, 64) and got["x_t pixels"].shape == (2, 3, 3 * 8 * 8)   # tiny: h 64 x 8 x 8
    e = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(image_seed(0, keys[1])))
    t = torch.tensor([400])
    x_t = diffusion.q_sample(imgs[1:2] * 2 - 1, t, noise=e[None])
    with torch.no_grad(), hspace_hook(model) as hs:
        model(x_t, t)
    np.testing.assert_allclose(got["h"][1, 1], hs.h.mean(dim=(2, 3))[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["x_t pixels"][1, 1],
                               torch.nn.functional.adaptive_avg_pool2d(x_t, 8).flatten().numpy(), rtol=1e-5, atol=1e-6)
    alone = P.hspace_features(model, diffusion, imgs[1:2], keys[1:2], [400], seed=0)
    np.testing.assert_allclose(alone["h"][0, 0], got["h"][1, 1], rtol=1e-5, atol=1e-6)   # batch-independent
    other = P.hspace_features(model, diffusion, imgs[1:2], ["another id"], [400], seed=0)
    assert not np.allclose(other["h"][0, 0], got["h"][1, 1])
    flat = P.hspace_features(model, diffusion, imgs[:1], keys[:1], [50], pool="flatten")
    assert flat["h"].shape == (1, 1, 64 * 8 * 8)
    with pytest.raises(ValueError, match="mean, flatten"):
        P.hspace_features(model, diffusion, imgs, keys, [50], pool="max")


def test_extraction_resumes_and_never_reads_test_images_to_fit(tiny_prior, mini_root_unreadable_test, tmp_path,
                                                                monkeypatch):
    """The train split's features and the probe fitted on them come from a root whose every test image is
    unreadable; a re-run reads the finished batches back instead of calling the UNet."""
    import analysis.hprobe.extract as E

    model, diffusion = tiny_prior
    train = P.labelled_images(mini_root_unreadable_test, "train")
    feats = P.extract_group_features({"train": train}, model, diffusion, [100, 300], batch_size=32,
                                     out=tmp_path / "features", progress=False)
    x, y, keys = feats["train"]
    assert x["h"].shape == (2, 80, 64) and y.tolist() == [it.label for it in train] and len(keys) == 80
    probe, info = P.fit_probe(x["h"][0], y)
    assert info["n_train"] == 80
    manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
    assert manifest["complete"] and sorted(manifest["entries"]) == ["train/0", "train/1", "train/2"]

    def no_unet(*a, **k):
        raise AssertionError("finished batches must be read back, not recomputed")

    monkeypatch.setattr(E, "hspace_features", no_unet)
    again = P.extract_group_features({"train": train}, model, diffusion, [100, 300], batch_size=32,
                                     out=tmp_path / "features", progress=False)
    np.testing.assert_array_equal(again["train"][0]["h"], x["h"])


# ------------------------------------------------------------------------------------------------ command line
def test_cli_on_mini_cub_writes_table_tests_and_figure(tmp_path, mini_root, capsys):
    out = tmp_path / "probe"
    root = str(mini_root)
    argv = ["--prior", "random", "--prior-config", "tiny", "--cub-root", root, "--set", f"again={root}",
            "--t", "100", "--batch-size", "64", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert P.main(argv) == 0
    printed = capsys.readouterr().out
    with open(out / "probe.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["features"], r["group"]) for r in rows] == [("h", "clean"), ("h", "again"), ("x_t pixels", "clean"),
                                                           ("x_t pixels", "again")]
    assert rows[0]["accuracy"] == rows[1]["accuracy"] and int(rows[0]["n"]) == 120 and int(rows[0]["n_train"]) == 80
    assert float(rows[0]["chance"]) == 10.0
    with open(out / "probe_tests.csv") as fh:
        tests = list(csv.DictReader(fh))
    assert len(tests) == 3 and float(tests[-1]["p_value"]) == 1.0          # clean vs its copy: identical
    assert "| h | clean |" in (out / "probe.md").read_text() and "| h | clean |" in printed
    assert (out / "pca.png").is_file() and (out / "pca.pdf").is_file()
    (out / "probe.csv").write_text("edited")                      # a finished run is a record: rerun resumes
    assert P.main(argv) == 0 and (out / "probe.csv").read_text() != "edited"
    rc = P.main([*argv[:-1], str(out), "--t", "200"])               # another study in the same folder
    assert rc == 2 and "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [([], "give --cub-root"), (["--quick", "--t", "0"], "--t must list"),
                                          (["--quick", "--t", "50,200", "--pca-t", "100"], "--pca-t must be one of"),
                                          (["--quick", "--folds", "1"], "--folds must be an integer >= 2"),
                                          (["--quick", "--set", "clean=x"], "are taken")])
def test_cli_refuses_bad_arguments_in_one_line(argv, needle, tmp_path, capsys):
    rc = P.main([*argv, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_cli_refuses_roots_without_labels(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rc = P.main(["--cub-root", str(folder), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "not a CUB root" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_table_in_the_readme_is_what_the_command_writes(tmp_path):
    """The README's probe table for mini-CUB is `python -m analysis.hprobe --quick`'s probe.md."""
    from pathlib import Path

    assert P.main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    table = (tmp_path / "probe.md").read_text().split("\n\n")[0].strip()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table in readme
