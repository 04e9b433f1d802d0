"""analysis.naturalness: the per-timestep DiffLoss terms of a set against clean, the paired tests between sets,
the provenance notes, the table, the figure and the resumable CLI."""
from __future__ import annotations

import json
import shutil

import matplotlib
import numpy as np
import pytest
import torch

from analysis import naturalness as N
from analysis.naturalness import cli as nat_cli
from analysis.naturalness import measure as nat_measure
from analysis.stats import bootstrap_ci, holm_adjust, paired_difference, two_level_t_test
from corruptions.degrade import build_degraded_cub
from cubdata import generate_mini_cub, read_cub, write_cub_metadata
from diffloss.prior import load_prior, resolve_prior
from diffloss.prior.hspace import hspace_hook

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prior():
    return load_prior("random", init_seed=3)  # the tiny config


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("nat")
    clean = base / "clean"
    generate_mini_cub(clean, n_classes=2, per_class=6, seed=2)  # 6 test images
    build_degraded_cub(clean, base / "deg", corruptions=("fog",), severities=(3,), workers=1, progress=False)
    return clean, base / "deg" / "fog" / "3"


# ---------------------------------------------------------------------------------------------- the terms
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
    torch.testing.assert_close(terms["sem_rel"], ((hz.h - hx.h) ** 2).flatten(1).sum(1) / (hx.h ** 2).flatten(1).sum(1))
    assert (terms["nat"] > 0).all() and (terms["sem"] > 0).all()
    same = N.naturalness_terms(model, diffusion, clean, clean, 300, noise)
    assert same["nat"].eq(0).all() and same["sem"].eq(0).all() and same["sem_rel"].eq(0).all()


def test_measure_is_paired_subset_stable_and_shares_the_clean_branch(prior, roots):
    model, diffusion = prior
    clean, fog = roots
    rows = N.measure_naturalness(model, diffusion, clean, {"fog": fog}, timesteps=(100, 700), progress=False)
    n_test = len(read_cub(clean).split("test"))
    assert len(rows) == 2 * 2 * n_test  # (clean, fog) x 2 timesteps x images
    assert all(r["nat"] == r["sem"] == r["sem_rel"] == 0 for r in rows if r["set"] == "clean")
    full = {(r["set"], r["image_id"], r["t"]): r for r in rows}
    sub = N.measure_naturalness(model, diffusion, clean, {"fog": fog}, timesteps=(700,), images=2, batch_size=1,
                                progress=False)
    assert len(sub) == 2 * 2
    for r in sub:  # the noise belongs to (seed, image, t): batching and subsets give the same numbers
        for m in N.METRICS:
            assert r[m] == pytest.approx(full[(r["set"], r["image_id"], r["t"])][m], rel=1e-5, abs=1e-12)
    # the clean images' prior response is computed once per batch and t: the same as running both branches
    pairs = N.pair_sets(clean, {"fog": fog})
    size = model.image_size
    imgs = torch.stack([nat_measure.load_square_tensor(p, size) for p in pairs.paths[("fog", 0)]])
    ref = torch.stack([nat_measure.load_square_tensor(p, size) for p in pairs.paths[("clean", 0)]])
    noise = torch.stack([N.image_noise(0, i, 100, size) for i in pairs.ids])
    direct = N.naturalness_terms(model, diffusion, imgs, ref, 100, noise)
    for k, i in enumerate(pairs.ids):
        for m in N.METRICS:
            assert full[("fog", i, 100)][m] == pytest.approx(float(direct[m][k]), rel=1e-5)


def test_images_are_spread_over_the_ids_not_the_first_classes(roots, prior):
    assert nat_measure.spread(range(10), 3) == [0, 3, 6]
    assert nat_measure.spread([5, 7], 0) == [5, 7] and nat_measure.spread([5, 7], 9) == [5, 7]
    clean, fog = roots
    ids = N.pair_sets(clean, {"fog": fog}, images=2).ids
    index = read_cub(clean)
    classes = {r.image_id: r.class_id for r in index.split("test")}
    assert len({classes[i] for i in ids}) == 2  # both classes, where the first two images share one


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


def test_progress_moves_after_every_unet_call(prior, roots, monkeypatch):
    model, diffusion = prior
    clean, fog = roots
    updates = []

    class Bar:
        def __init__(self, total, initial=0, **kw):
            self.total, self.n = total, initial

        def update(self, k):
            updates.append(k)
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(nat_measure, "tqdm", Bar)
    N.measure_naturalness(model, diffusion, clean, {"fog": fog, "fog2": fog}, timesteps=(100, 500), batch_size=4,
                          progress=True, check_images=False)
    # 6 images in batches of 4 and 2; per batch and t: the clean call, then one per set
    assert updates == [4] * 6 + [2] * 6


# ---------------------------------------------------------------------------------------------- statistics
def test_paired_difference_by_hand():
    res = paired_difference([1.0, 2.0, 3.0, 4.5], [0.0, 0.0, 0.0, 0.5], n_boot=200, seed=1)
    assert res["mean_diff"] == pytest.approx(2.5) and res["median_diff"] == pytest.approx(2.5)
    assert (res["n_a_higher"], res["n_a_lower"], res["n"]) == (4, 0, 4)
    assert res["p_value"] == pytest.approx(2 / 16)  # exact: all 4 differences positive, 2 * (1/2)^4
    assert res["statistic"] == 0.0  # two-sided: min(W+, W-) = W- = 0
    assert (res["ci_low"], res["ci_high"]) == bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_boot=200, seed=1)
    zero = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert zero["p_value"] == 1.0 and zero["mean_diff"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([float("nan")], [1.0])


def _rows(values: dict[str, np.ndarray], ts=(10, 20)) -> list[dict]:
    """Per-image rows of sets whose values are ``[replicates, images]`` (the same for every metric and t, times
    t/10 so the timesteps differ)."""
    rows = []
    for name, v in values.items():
        v = np.atleast_2d(v)
        for rep in range(v.shape[0]):
            for t in ts:
                for i in range(v.shape[1]):
                    x = float(v[rep, i]) * t / 10
                    rows.append({"set": name, "replicate": rep, "image_id": 100 + i, "t": t, "denoise": x, "nat": x,
                                 "sem": x, "sem_rel": x})
    return rows


def test_paired_comparisons_against_scipy_and_holm():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.3, 12)
    b = a - rng.normal(0.2, 0.1, 12)  # a is higher on (almost) every image
    c = rng.normal(1.0, 0.3, 12)
    rows = _rows({"clean": np.zeros(12), "a": a, "b": b, "c": c})
    paired = N.paired_comparisons(rows, [("a", "b"), ("c", "a")], metrics=("nat", "sem"), n_boot=300, seed=4)
    assert [(r["set_a"], r["set_b"], r["metric"], r["t"]) for r in paired] == [
        (x, y, m, t) for x, y in [("a", "b"), ("c", "a")] for m in ("nat", "sem") for t in (10, 20)]
    for k, r in enumerate(paired):
        va, vb = {"a": a, "b": b, "c": c}[r["set_a"]], {"a": a, "b": b, "c": c}[r["set_b"]]
        d = (va - vb) * r["t"] / 10
        assert r["mean_diff"] == pytest.approx(d.mean()) and r["n"] == 12 and r["test"] == "wilcoxon"
        assert r["p_value"] == pytest.approx(wilcoxon(d).pvalue)
        lo, hi = bootstrap_ci(d, n_boot=300, seed=np.random.default_rng([4, k]))
        assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert [r["p_adjusted"] for r in paired] == pytest.approx(holm_adjust([r["p_value"] for r in paired]))
    assert all(r["p_adjusted"] < 0.01 for r in paired[:4])  # a - b: significant at every t after Holm
    flipped = N.paired_comparisons(rows, [("b", "a")], metrics=("nat",), n_boot=300, seed=4)
    assert flipped[0]["mean_diff"] == pytest.approx(-paired[0]["mean_diff"])
    assert flipped[0]["p_value"] == pytest.approx(paired[0]["p_value"])
    with pytest.raises(ValueError, match="unknown set"):
        N.paired_comparisons(rows, [("a", "nope")])


def test_replicates_count_each_image_once_and_add_the_seed_variance():
    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 0.2, 10)
    reps = np.stack([base + s for s in (0.0, 0.1, 0.3)])  # three restorer seeds
    rows = _rows({"one": base, "three": reps}, ts=(10,))
    summary = {(s["set"], s["metric"]): s for s in N.summarize(rows)}
    assert summary[("three", "nat")]["n"] == 10 and summary[("three", "nat")]["replicates"] == 3
    assert summary[("three", "nat")]["mean"] == pytest.approx(reps.mean())
    (r,) = N.paired_comparisons(rows, [("three", "one")], metrics=("nat",), n_boot=200)
    assert r["test"] == "two-level t" and (r["replicates_a"], r["replicates_b"]) == (3, 1)
    assert r["mean_diff"] == pytest.approx(reps.mean() - base.mean())
    assert r["p_value"] == pytest.approx(two_level_t_test(base[None], reps)["p_value"])
    # the seeds disagree: the two-level p is far larger than a Wilcoxon test of the image means would give
    assert r["p_value"] > 0.05 > paired_difference(reps.mean(0), base)["p_value"]


def test_default_comparisons_are_the_later_set_minus_the_earlier():
    assert N.default_comparisons(["clean", "degraded", "w/o", "w/"]) == [("w/o", "degraded"), ("w/", "degraded"),
                                                                         ("w/", "w/o")]


# ---------------------------------------------------------------------------------------------- report
def test_figure_draws_one_line_per_set_and_per_comparison(prior, roots):
    import matplotlib.pyplot as plt

    model, diffusion = prior
    clean, fog = roots
    rows = N.measure_naturalness(model, diffusion, clean, {"fog": fog, "fog again": fog, "clean copy": clean},
                                 timesteps=(100, 500, 900), images=4, progress=False)
    summary = N.summarize(rows)
    paired = N.paired_comparisons(rows, [("fog", "clean copy"), ("fog", "clean")], n_boot=50)
    fig = N.draw_report(summary, paired)
    top, bottom = fig.axes[:4], fig.axes[4:]

    def labels(ax):
        return [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]

    assert labels(top[0]) == ["clean", "fog", "fog again", "clean copy"]  # denoising error: clean is a curve
    # nat / sem / sem_rel of clean vs clean is 0: not drawn on a log axis; a copy of clean is 0 too (log: no
    # point), but its line is drawn
    assert all(labels(ax) == ["fog", "fog again", "clean copy"] for ax in top[1:])
    nat = next(ln for ln in top[1].get_lines() if ln.get_label() == "fog")
    want = [s["mean"] for s in summary if s["set"] == "fog" and s["metric"] == "nat"]
    assert list(nat.get_ydata()) == pytest.approx(want)
    assert bottom[0].get_legend() is not None and [t.get_text() for t in bottom[0].get_legend().get_texts()] == [
        "fog - clean copy"]  # the comparison against clean (mean 0) is in the table, not on a % scale
    for ax, metric in zip(bottom[1:], N.PAIRED_METRICS):
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "fog - clean copy"]
        pts = [r for r in paired if r["set_b"] == "clean copy" and r["metric"] == metric]
        assert list(line.get_ydata()) == pytest.approx([100 * r["mean_diff"] / r["mean_b"] if r["mean_b"] else
                                                        float("nan") for r in pts], nan_ok=True)
    plt.close(fig)
    md = N.format_markdown(summary, "nat")
    assert md.splitlines()[0] == "| nat | t=100 | t=500 | t=900 |" and len(md.splitlines()) == 2 + 4
    table = N.format_paired_markdown(paired)
    assert len(table.splitlines()) == 2 + len(paired) and "| fog - clean | nat | 100 |" in table


# ---------------------------------------------------------------------------------------------- provenance
def _restored_by(tmp_path, degraded, diffloss: bool, prior: str, name: str):
    """A CUB root restored (restoration.restore) by a tiny network whose checkpoint records that it was trained
    with or without DiffLoss against ``prior`` (the config restoration.train writes)."""
    from restoration.checkpoint import save_checkpoint
    from restoration.nets import DEFAULT_NET, build_net
    from restoration.restore import restore_cub_root

    torch.manual_seed(0)
    net = build_net(DEFAULT_NET)
    ckpt = save_checkpoint(tmp_path / f"{name}.pt", net, DEFAULT_NET, {}, torch.optim.Adam(net.parameters()), 1,
                           config={"diffloss": diffloss, "prior": prior, "prior_config": None, "gamma": 0.5,
                                   "lam": 2.0})
    restore_cub_root(ckpt, degraded, tmp_path / name, progress=False)
    return tmp_path / name


def test_notes_say_which_prior_a_restorer_was_trained_against(roots, tmp_path):
    clean, fog = roots
    same = _restored_by(tmp_path, fog, True, "random", "same")
    other = _restored_by(tmp_path, fog, True, "builtin", "other")
    plain = _restored_by(tmp_path, fog, False, "random", "plain")
    spec = resolve_prior("random")
    notes, trained = N.training_notes({"fog": [fog], "w/ same": [same], "w/ other": [other], "w/o": [plain],
                                       "replicates": [plain, same]}, spec, N.prior_identity(spec))
    assert trained == ["w/ same", "replicates"]
    text = "\n".join(notes)
    assert "'w/ same': restored by a network trained with DiffLoss (gamma 0.5, lambda 2) against THIS prior" in text
    assert "'w/ other': restored by a network trained with DiffLoss against another prior (--prior builtin)" in text
    assert "'w/o': restored by a network trained without DiffLoss." in text
    assert "'fog'" not in text  # a degraded copy is no restore output
    assert "random weights" in notes[-1]
    builtin = resolve_prior("builtin")
    assert N.training_notes({"w/ other": [other]}, builtin, N.prior_identity(builtin))[1] == ["w/ other"]
    (next(tmp_path.glob("same.pt"))).write_bytes(b"changed")
    assert "changed after the restoration" in N.training_notes({"s": [same]}, spec, N.prior_identity(spec))[0][0]


# ---------------------------------------------------------------------------------------------- the CLI
def _argv(clean, fog, out, *extra):
    return ["--cub-root", str(clean), "--set", f"fog={fog}", "--prior", "random", "--timesteps", "200,800",
            "--batch-size", "4", "--n-boot", "50", "--out", str(out), "--no-progress", "--device", "cpu", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--images", "-1"], "--images must be an integer >= 0, got -1"),
    (["--threads", "-1"], "--threads must be an integer >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--timesteps", "5,5"], "--timesteps must not repeat"),
    (["--timesteps", "5,x"], "--timesteps must be comma-separated integers"),
    (["--timesteps", "1000"], "--timesteps must be in 0..999 for this prior"),
    (["--confidence", "95"], "--confidence must be in (0, 1)"),
    (["--n-boot", "0"], "--n-boot must be a positive integer"),
    (["--compare", "fog-clean"], "--compare 'fog-clean': expected 'A - B'"),
    (["--compare", "fog - smog"], "--compare names unknown set(s) ['smog']"),
    (["--set", "fog=x"], "--set labels must be unique"),
    (["--set", "clean=x"], "--set clean: 'clean' names the --cub-root images"),
    (["--set", "other={missing}"], "other: {missing} does not exist"),
    (["--prior", "{missing}"], "prior checkpoint not found"),
    (["--quick"], "--quick builds its own sets; leave out --cub-root and --set"),
])
def test_cli_refuses_bad_arguments_in_one_line_before_writing(roots, tmp_path, capsys, monkeypatch, extra, message):
    clean, fog = roots
    missing = tmp_path / "missing"
    monkeypatch.setattr(nat_cli, "_quick_sets", lambda progress: pytest.fail("built the quick sets"))
    out = tmp_path / "out"
    rc = N.main(_argv(clean, fog, out, *[e.format(missing=missing) for e in extra]))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err
    assert message.format(missing=missing) in err
    assert not out.exists()
    assert N.main(["--cub-root", str(clean), "--out", str(out)]) == 2
    assert "at least one --set" in capsys.readouterr().err
    assert N.main(["--quick", "--compare", "w/ DiffLoss/fog - w/o DiffLoss/smog", "--out", str(out)]) == 2
    assert "--quick's sets are" in capsys.readouterr().err and not out.exists()


def test_quick_plan_compares_each_demo_row_with_the_one_before():
    from analysis.demo.table2 import DEMO_CORRUPTIONS

    names, pairs = nat_cli._quick_plan()
    assert {"degraded/fog", "w/o DiffLoss/fog", "w/ DiffLoss/fog"} <= set(names)
    assert pairs[:2] == [("w/o DiffLoss/fog", "degraded/fog"), ("w/ DiffLoss/fog", "w/o DiffLoss/fog")]
    assert len(pairs) == 2 * len(DEMO_CORRUPTIONS)
    quick = N.NaturalnessConfig(quick=True, out="x")
    assert quick.image_count() == N.QUICK_IMAGES and quick.timestep_list() == list(N.QUICK_TIMESTEPS)
    assert N.NaturalnessConfig(quick=True, out="x", images=7).image_count() == 7
    assert N.NaturalnessConfig(cub_root="c", set=["a=b"], out="x").image_count() is None


def test_cli_writes_the_report_and_resumes_an_interrupted_run(roots, tmp_path, capsys, monkeypatch):
    clean, fog = roots
    calls = []
    real = nat_measure._measure_batch

    def counted(*a, **k):
        calls.append(1)
        if interrupt and len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(nat_measure, "_measure_batch", counted)
    monkeypatch.setattr(nat_measure.Manifest, "save_due", lambda self, *a, **k: False)  # only the interrupt saves
    interrupt = True
    out = tmp_path / "o"
    assert N.main(_argv(clean, fog, out)) == 130  # Ctrl-C in the second of two batches
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    kept = json.loads((out / "manifest.json").read_text())
    assert list(kept["done"]) == ["0"] and not kept["complete"] and not (out / "done.json").exists()

    interrupt, calls[:] = False, []
    assert N.main(_argv(clean, fog, out)) == 0
    assert len(calls) == 1  # only the missing batch
    text = capsys.readouterr().out
    assert "| nat | t=200 | t=800 |" in text and "paired tests significant" in text
    fresh = tmp_path / "fresh"
    assert N.main(_argv(clean, fog, fresh)) == 0
    for name in ("per_image.csv", "naturalness.csv", "paired.csv", "naturalness.md"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    assert (out / "per_image.csv").read_text().splitlines()[0] == "set,replicate,image_id,t,denoise,nat,sem,sem_rel"
    summary = (out / "naturalness.csv").read_text().splitlines()
    assert summary[0] == "set,metric,t,mean,std,n,replicates" and len(summary) == 1 + 2 * 4 * 2
    paired = (out / "paired.csv").read_text().splitlines()
    assert paired[0].startswith("set_a,set_b,metric,t,n,") and len(paired) == 1  # one set: no default pair
    assert (out / "naturalness.png").stat().st_size > 0
    done = json.loads((out / "done.json").read_text())
    assert done["images"] == 6 and done["tests"] == 0 and done["trained_against_this_prior"] == []

    calls[:] = []  # another comparison or bootstrap: the measurements are reused, the report redone
    assert N.main(_argv(clean, fog, out, "--compare", "clean - fog", "--n-boot", "20")) == 0
    paired = (out / "paired.csv").read_text().splitlines()
    assert calls == [] and len(paired) == 1 + 3 * 2 and paired[1].startswith("clean,fog,nat,200,6,1,1,")
    assert N.main(_argv(clean, fog, out, "--seed", "1")) == 2  # other measurements: refused, not mixed
    assert "other settings (seed: 0 there, 1 now)" in capsys.readouterr().err


def test_cli_refuses_a_foreign_out_unless_overwrite(roots, tmp_path, capsys):
    clean, fog = roots
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert N.main(_argv(clean, fog, out, "--timesteps", "300")) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert N.main(_argv(clean, fog, out, "--timesteps", "300", "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "naturalness.csv").is_file()


def test_cli_notes_a_set_trained_against_the_same_prior(roots, tmp_path, capsys):
    clean, fog = roots
    same = _restored_by(tmp_path, fog, True, "random", "restored")
    out = tmp_path / "o"
    assert N.main(_argv(clean, fog, out, "--set", f"w/ DiffLoss={same}", "--timesteps", "300",
                        "--compare", "w/ DiffLoss - fog")) == 0
    assert "NOTE: 'w/ DiffLoss': restored by a network trained with DiffLoss" in capsys.readouterr().out
    assert json.loads((out / "done.json").read_text())["trained_against_this_prior"] == ["w/ DiffLoss"]
    assert "against THIS prior" in (out / "naturalness.md").read_text()


# ---------------------------------------------------------------------------------------------- the docs' numbers
def test_readme_and_prior_docs_show_the_recorded_quick_run():
    """The README's and docs/prior.md's naturalness blocks are what the committed record of the --quick run renders
    to (`python -m analysis.naturalness.docs`), and the record is of the settings --quick has now."""
    from analysis.naturalness import docs

    record = docs.read_record()
    stale = [str(p) for p, text in docs.rendered_files(record).items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"stale naturalness blocks in {stale}: run {docs.COMMAND}"
    assert record["images"] == N.QUICK_IMAGES
    assert sorted({r["t"] for r in record["summary"]}) == list(N.QUICK_TIMESTEPS)
    names, pairs = nat_cli._quick_plan()
    assert list(record["sets"]) == names
    assert list(dict.fromkeys((r["set_a"], r["set_b"]) for r in record["paired"])) == pairs
    assert docs.FIGURE.stat().st_size > 0


@pytest.mark.slow
def test_quick_run_reproduces_the_record(tmp_path):
    """`--quick` from an empty cache (the demo's shipped weights) gives the recorded numbers."""
    from analysis.naturalness import docs

    assert N.main(["--quick", "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    new, old = docs.record_from_run(tmp_path / "q"), docs.read_record()
    assert [(r["set"], r["metric"], r["t"]) for r in new["summary"]] == [(r["set"], r["metric"], r["t"]) for r in
                                                                        old["summary"]]
    for a, b in zip(new["summary"], old["summary"]):
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-3, abs=1e-9)
    for a, b in zip(new["paired"], old["paired"]):
        scale = abs(b["mean_b"]) + 1e-12
        assert a["mean_diff"] == pytest.approx(b["mean_diff"], abs=1e-3 * scale)
        assert (a["p_adjusted"] < 0.05) == (b["p_adjusted"] < 0.05)
    assert new["notes"] == old["notes"] and new["trained_against_this_prior"] == old["trained_against_this_prior"]
