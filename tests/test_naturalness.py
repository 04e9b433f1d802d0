"""analysis.naturalness: the per-timestep DiffLoss terms of a set against clean, the table, the plot, the CLI."""
from __future__ import annotations

import shutil

import matplotlib
import pytest
import torch

from analysis import naturalness as N
from corruptions.degrade import build_degraded_cub
from cubdata import generate_mini_cub, read_cub, write_cub_metadata
from diffloss.prior.hspace import hspace_hook
from diffloss.prior import load_prior

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prior():
    return load_prior("random", init_seed=3)  # the tiny config


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("nat")
    clean = base / "clean"
    generate_mini_cub(clean, n_classes=2, per_class=6, seed=2)
    build_degraded_cub(clean, base / "deg", corruptions=("fog",), severities=(3,), progress=False)
    return clean, base / "deg" / "fog" / "3"


def test_terms_against_a_hand_computation(prior):
    model, diffusion = prior
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 32, 32, generator=g)
    img = (clean * 0.5 + 0.2).clamp(0, 1)
    noise = torch.randn(2, 3, 32, 32, generator=g)
    terms = N.naturalness_terms(model, diffusion, img, clean, 300, noise)
    t = torch.full((2,), 300)
    with torch.no_grad():
        z_t = diffusion.q_sample(img * 2 - 1, t, noise=noise)
        x_t = diffusion.q_sample(clean * 2 - 1, t, noise=noise)
        with hspace_hook(model) as hz:
            ez = model(z_t, t)[:, :3]
        with hspace_hook(model) as hx:
            ex = model(x_t, t)[:, :3]
    torch.testing.assert_close(terms["denoise"], ((ez - noise) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(terms["nat"], ((ez - ex) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(terms["sem"], ((hz.h - hx.h) ** 2).flatten(1).mean(1))
    assert (terms["nat"] > 0).all() and (terms["sem"] > 0).all()
    same = N.naturalness_terms(model, diffusion, clean, clean, 300, noise)
    assert same["nat"].eq(0).all() and same["sem"].eq(0).all()


def test_measure_is_paired_and_subset_stable(prior, roots):
    model, diffusion = prior
    clean, fog = roots
    rows = N.measure_naturalness(model, diffusion, clean, {"fog": fog}, timesteps=(100, 700), progress=False)
    n_test = len(read_cub(clean).split("test"))
    assert len(rows) == 2 * 2 * n_test  # (clean, fog) x 2 timesteps x images
    assert all(r["nat"] == 0 for r in rows if r["set"] == "clean")
    sub = N.measure_naturalness(model, diffusion, clean, {"fog": fog}, timesteps=(700,), images=2, batch_size=1,
                                progress=False)
    full = {(r["set"], r["image_id"], r["t"]): r for r in rows}
    for r in sub:  # the noise belongs to (seed, image, t): batching and subsets give the same numbers
        assert r["denoise"] == pytest.approx(full[(r["set"], r["image_id"], r["t"])]["denoise"], rel=1e-5)
    summary = N.summarize(rows)
    cell = next(s for s in summary if s["set"] == "fog" and s["metric"] == "nat" and s["t"] == 100)
    vals = [r["nat"] for r in rows if r["set"] == "fog" and r["t"] == 100]
    assert cell["n"] == n_test and cell["mean"] == pytest.approx(sum(vals) / len(vals))


def test_unmatched_images_are_dropped_loudly(prior, roots, tmp_path, caplog):
    model, diffusion = prior
    clean, fog = roots
    partial = tmp_path / "partial"
    shutil.copytree(fog, partial)
    idx = read_cub(partial)
    write_cub_metadata(idx, partial, records=idx.records[1:])  # the set lacks its first image
    with caplog.at_level("WARNING"):
        rows = N.measure_naturalness(model, diffusion, clean, {"fog": partial}, timesteps=(500,), progress=False)
    assert "dropped per set" in caplog.text
    assert {r["image_id"] for r in rows} == {r.image_id for r in read_cub(partial).split("test")}


def test_plot_draws_one_line_per_set(prior, roots):
    import matplotlib.pyplot as plt

    model, diffusion = prior
    clean, fog = roots
    rows = N.measure_naturalness(model, diffusion, clean, {"fog": fog, "fog again": fog}, timesteps=(100, 500, 900),
                                 images=3, progress=False)
    fig, axes = plt.subplots(1, 3)
    N.plot_naturalness(N.summarize(rows), axes)
    labels = [[ln.get_label() for ln in ax.get_lines()] for ax in axes]
    assert labels[0] == ["clean", "fog", "fog again"]  # denoising error: clean is a real curve
    assert labels[1] == labels[2] == ["fog", "fog again"]  # nat/sem of clean vs clean is 0: not drawn on a log axis
    assert all(len(ln.get_xdata()) == 3 for ax in axes for ln in ax.get_lines())
    plt.close(fig)
    md = N.format_markdown(N.summarize(rows), "nat")
    assert md.splitlines()[0] == "| nat | t=100 | t=500 | t=900 |" and len(md.splitlines()) == 2 + 3


def test_cli_errors_are_one_line(tmp_path, capsys, roots):
    clean, _ = roots
    assert N.main(["--cub-root", str(clean), "--set", f"x={tmp_path / 'missing'}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: x:") and "missing" in err and "\n" not in err
    assert N.main(["--quick", "--cub-root", str(clean)]) == 2
    assert "--quick builds its own sets" in capsys.readouterr().err
    assert N.main(["--cub-root", str(clean)]) == 2
    assert "at least one --set" in capsys.readouterr().err


def test_cli_writes_table_and_figure(tmp_path, capsys, roots):
    clean, fog = roots
    out = tmp_path / "o"
    rc = N.main(["--cub-root", str(clean), "--set", f"fog={fog}", "--prior", "random", "--timesteps", "200,800",
                 "--images", "2", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| nat | t=200 | t=800 |" in text
    rows = (out / "naturalness.csv").read_text().splitlines()
    assert rows[0] == "set,metric,t,mean,std,n" and len(rows) == 1 + 2 * 3 * 2
    assert (out / "naturalness.png").stat().st_size > 0
