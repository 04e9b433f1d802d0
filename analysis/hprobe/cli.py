"""``python -m analysis.hprobe``: the run as the command line does it (`run_probe`), its options (`HProbeConfig`)
and `main`."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runkit.checks import int_at_least, positive_int
from runkit.cli import ArgumentParser, parse_set
from runkit.distributed import distributed, env_world, on_rank0
from runkit.errors import run_cli
from runkit.files import atomic_write_text
from runkit.options import RunOptions, add_config_arguments, config_from_args, option
from runkit.rundir import RunDir
from runkit.runtime import torch_threads
from diffloss.prior import PriorOptions

from analysis.hprobe.extract import POOLS, REPRESENTATIONS, LabelledImage, extract_group_features, labelled_images
from analysis.hprobe.probe import compare_probes, fit_probe, pca_projection, score_probe
from analysis.hspace.report import markdown_table, write_csv

log = logging.getLogger(__name__)

__all__ = ["HProbeConfig", "run_probe", "build_parser", "main", "PROBE_COLUMNS", "COMMAND", "OUTPUTS"]

COMMAND = "analysis.hprobe"
OUTPUTS = ("probe.csv", "probe_tests.csv", "probe.md", "pca.png", "pca.pdf", "summary.json", "features/*", "data/*")
TEST_COLUMNS = ("t", "features_a", "group_a", "features_b", "group_b", "n", "accuracy_a", "accuracy_b", "b_only_a",
                "c_only_b", "p_value", "p_holm")
PROBE_COLUMNS = ("t", "features", "group", "n", "correct", "accuracy", "ci_low", "ci_high", "majority", "chance", "C",
                 "cv_accuracy", "n_train", "dim")


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


@dataclass(kw_only=True)
class HProbeConfig(RunOptions, PriorOptions):
    """The options of ``python -m analysis.hprobe``."""

    out: str = option("runs/hprobe", help="output folder (resumable)")
    quick: bool = option(False, result=True,
                         help="mini-CUB: the built-in prior, fitted on mini-CUB's train split, scored on its test "
                              "images clean, degraded and restored by the demo restorers w/o and w/ DiffLoss")
    cub_root: str | None = option(None, result=True,
                                  help="the clean CUB root: the probe is fitted on its train split; its test split is "
                                       "the group 'clean' (--quick: mini-CUB)")
    set: list[str] = option(repeat=True, metavar="LABEL=ROOT", result=True,
                            help="a test group: a CUB root holding the same test images (degraded, restored); "
                                 "repeat (--quick: its own groups)")
    t: tuple[int, ...] = option((50, 200, 500), parse=_parse_ints, metavar="T[,T...]", result=True,
                                help="timesteps (of the prior's 1000) at which h of x_t is probed")
    pool: str = option("mean", choices=POOLS, result=True,
                       help="h [C, H, W] as a vector: its spatial mean (C values) or all of it (flatten)")
    batch_size: int = option(16, check=positive_int, help="images per UNet batch")
    folds: int = option(5, check=int_at_least(2), result=True,
                        help="cross-validation folds choosing the probe's C (capped at the smallest class's count)")
    pca_t: int | None = option(None, help="the t of the PCA figure (default: the middle of --t)")
    pca_classes: int = option(10, check=positive_int, help="classes drawn in the PCA figure (the first ones)")
    jobs: int = option(1, check=positive_int, help="processes of the cross-validation (scikit-learn n_jobs)")
    quick_corruption: str = option("lowlight", result=True, help="--quick: the corruption of the degraded group")
    quick_severity: int = option(3, choices=(1, 2, 3, 4, 5), result=True, help="--quick: its severity")
    restore: bool = option(True, result=True, help="--quick: the restored groups",
                           negative_help="--quick: skip the restored groups")

    def check(self) -> None:
        if not self.quick and not self.cub_root:
            raise ValueError("give --cub-root CUB_ROOT (the probe is fitted on its train split), or run --quick")
        if not self.t:
            raise ValueError("--t must list at least one timestep")
        if any(t < 1 for t in self.t) or len(set(self.t)) != len(self.t):
            raise ValueError(f"--t must list distinct timesteps >= 1, got {list(self.t)}")
        if self.pca_t is not None and self.pca_t not in self.t:
            raise ValueError(f"--pca-t must be one of --t {list(self.t)}, got {self.pca_t}")
        groups = self.groups()
        if "clean" in groups or "train" in groups:
            raise ValueError("--set labels 'clean' and 'train' are taken (the --cub-root's test and train splits)")

    def groups(self) -> dict[str, str]:
        """``{label: root}`` of the ``--set`` options."""
        out: dict[str, str] = {}
        for text in self.set:
            label, roots = parse_set(text)
            if len(roots) != 1:
                raise ValueError(f"--set {label}: one root per group")
            if label in out:
                raise ValueError(f"--set labels must be unique, {label!r} is given twice")
            out[label] = roots[0]
        return out


def _check_roots(cfg: HProbeConfig) -> None:
    for label, root in {"--cub-root": cfg.cub_root, **cfg.groups()}.items():
        if root is None:
            continue
        if not Path(root).is_dir():
            raise FileNotFoundError(f"{label}: {root} is not a folder (expected a CUB root)")
        if not (Path(root) / "images.txt").is_file():
            raise ValueError(f"{label}: {root} is not a CUB root (no images.txt): the probe needs each image's class")


def _same_images(groups: Mapping[str, list[LabelledImage]]) -> dict[str, list[LabelledImage]]:
    """The test groups restricted to the images all of them hold (in the first group's order)."""
    common = set.intersection(*({it.key for it in v} for v in groups.values()))
    first = next(iter(groups.values()))
    order = [it.key for it in first if it.key in common]
    dropped = {g: len(v) - len(order) for g, v in groups.items() if len(v) != len(order)}
    if not order:
        raise ValueError(f"the test groups share no image ({ {g: len(v) for g, v in groups.items()} }); give roots of "
                         "the same images (degraded or restored copies of --cub-root's test split)")
    if dropped:
        log.warning("scoring the %d test images every group holds; dropped per group: %s", len(order), dropped)
    return {g: [next(it for it in v if it.key == k) for k in order] for g, v in groups.items()}


def _decode_all(items: Sequence[LabelledImage]) -> None:
    from cubdata import load_pil_rgb

    for it in items:
        load_pil_rgb(it.path)  # ImageDecodeError names the file, before any UNet call


def fit_and_score(features: Mapping[str, tuple[Mapping[str, np.ndarray], np.ndarray, list[str]]],
                  timesteps: Sequence[int], groups: Sequence[str], seed: int = 0, folds: int = 5, jobs: int = 1,
                  representations: Sequence[str] = REPRESENTATIONS) -> list[dict]:
    """One row per (t, representation, group) of `PROBE_COLUMNS`: a probe fitted on ``features["train"]`` at each
    t and for each representation ("h", and the baseline "x_t pixels"; nothing else is seen while fitting),
    scored on each of ``groups`` (keys of ``features``: ``({representation: [T, N, D]}, labels [N], keys)``).
    ``chance`` is 100 / the number of train classes; ``per_image`` (not a CSV column) the correct predictions."""
    reps, y_train, _ = features["train"]
    rows = []
    for i, t in enumerate(timesteps):
        for name in representations:
            probe, info = fit_probe(reps[name][i], y_train, seed=seed, folds=folds, jobs=jobs)
            for g in groups:
                x, y, _ = features[g]
                score = score_probe(probe, x[name][i], y, seed=seed)
                rows.append({"t": int(t), "features": name, "group": g, **score, "chance": 100.0 / info["n_classes"],
                             "C": info["C"], "cv_accuracy": 100.0 * info["cv_accuracy"], "n_train": info["n_train"],
                             "dim": info["dim"]})
    return rows


def probe_tests(rows: Sequence[Mapping]) -> list[dict]:
    """The paired comparisons of `fit_and_score`'s rows (`compare_probes`, one Holm family): at every t, h against
    the pixel baseline in each group, and h of every pair of groups (the same test images in every group)."""
    correct = {(r["t"], r["features"], r["group"]): r["per_image"] for r in rows}
    ts = list(dict.fromkeys(r["t"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    pairs = [((t, "h", g), (t, "x_t pixels", g)) for t in ts for g in groups if (t, "x_t pixels", g) in correct]
    pairs += [((t, "h", a), (t, "h", b)) for t in ts for i, a in enumerate(groups) for b in groups[i + 1:]]
    out = []
    for r in compare_probes(correct, pairs):
        (t, fa, ga), (_, fb, gb) = r.pop("a"), r.pop("b")
        out.append({"t": t, "features_a": fa, "group_a": ga, "features_b": fb, "group_b": gb, **r})
    return out


def probe_markdown(rows: Sequence[Mapping], tests: Sequence[Mapping] = ()) -> str:
    """The probe's table: one row per (features, group), one column per t, "accuracy [95% CI]" in percent; then
    ``tests`` (`probe_tests`) as a table of McNemar's tests with Holm-corrected p-values."""
    ts = sorted({int(r["t"]) for r in rows})
    keys = list(dict.fromkeys((r["features"], r["group"]) for r in rows))
    cells = {(r["features"], r["group"], int(r["t"])): r for r in rows}
    table = [{"probe of": f, "group": g, **{f"t = {t}": "{accuracy:.1f} [{ci_low:.1f}, {ci_high:.1f}]".format(
        **cells[f, g, t]) for t in ts}} for f, g in keys]
    first = rows[0]
    note = (f"\nLinear probe (StandardScaler + LogisticRegression, C chosen by cross-validation on the "
            f"{first['n_train']} train images) of the class from h of x_t, and from the pixels of x_t averaged to "
            f"h's size (the baseline): accuracy in % on each group's {first['n']} test images with its 95% "
            f"bootstrap interval; chance {first['chance']:.1f}%.\n")
    text = markdown_table(table, ["probe of", "group", *[f"t = {t}" for t in ts]]) + note
    if tests:
        shown = [{"t": r["t"], "a": f"{r['features_a']}, {r['group_a']}", "b": f"{r['features_b']}, {r['group_b']}",
                  "accuracy a / b": f"{r['accuracy_a']:.1f} / {r['accuracy_b']:.1f}",
                  "only a right / only b right": f"{r['b_only_a']} / {r['c_only_b']}", "p (Holm)": r["p_holm"]}
                 for r in tests]
        text += ("\nPaired tests on the same test images (McNemar's exact test, Holm over all "
                 f"{len(tests)}):\n\n" + markdown_table(shown, list(shown[0]), {"p (Holm)": "{:.2g}"}))
    return text


def run_probe(cfg: HProbeConfig) -> dict[str, list[dict]]:
    """The whole probe as the CLI runs it; writes every output into ``cfg.out`` and returns ``{"rows": the
    probe's rows (`fit_and_score`), "tests": its paired tests (`probe_tests`)}``. ``cfg.threads`` (0: 1 with
    --quick, else the libraries' choice) caps torch's and the BLAS libraries' threads: on a busy 2-core machine
    two BLAS threads made each probe fit 13 times slower than one (5.2 s vs 0.38 s, measured)."""
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    threads = cfg.threads or (1 if cfg.quick else None)
    with torch_threads(threads), threadpool_limits(limits=threads):
        return _run_probe(cfg)


def _run_probe(cfg: HProbeConfig) -> dict[str, list[dict]]:
    from classifiers.predict import resolve_device
    from diffloss.prior import load_prior

    cfg.validate()
    _check_roots(cfg)
    if cfg.quick and not cfg.set and env_world() > 1:
        raise ValueError("--quick builds its groups in one process and does not run under torchrun: run it once "
                         "without torchrun, then pass --cub-root and the groups it made under OUT/data with --set")
    run_dir = RunDir(cfg.out, COMMAND, cfg, outputs=OUTPUTS).check()
    spec = cfg.prior_spec()
    dev = resolve_device(cfg.device)
    out = Path(cfg.out)
    with distributed(str(dev)) as (rank, world, rank_dev):
        model, diffusion = load_prior(spec, device=str(rank_dev))
        bad = [t for t in cfg.t if t >= int(diffusion.num_timesteps)]
        if bad:
            raise ValueError(f"--t must be below the prior's {diffusion.num_timesteps} diffusion steps, got {bad}")
        on_rank0(lambda: run_dir.start(clear=OUTPUTS[:6]), rank, world)
        cub_root, sets = cfg.cub_root, cfg.groups()
        if cfg.quick and not sets:
            from analysis.demo.hspace_quick import quick_groups
            from cubdata import mini_cub_root

            cub_root = cub_root or str(mini_cub_root())
            built = quick_groups(out / "data", cfg.quick_corruption, cfg.quick_severity, restored=cfg.restore,
                                 cub_root=cub_root, n_images=None, seed=cfg.seed, split="test")
            sets = {g: str(v) for g, v in built.items() if g != "clean"}
        tests = _same_images({"clean": labelled_images(cub_root, "test"),
                              **{g: labelled_images(root, "test") for g, root in sets.items()}})
        train = labelled_images(cub_root, "train")
        on_rank0(lambda: _decode_all([*train, *(it for v in tests.values() for it in v)]), rank, world)
        settings = {"prior": str(cfg.prior), "prior_config": spec.config_name,
                    "roots": {"train": str(cub_root), **{g: str(sets.get(g, cub_root)) for g in tests}}}
        feats = extract_group_features({"train": train, **tests}, model, diffusion, cfg.t, seed=cfg.seed,
                                       pool=cfg.pool, batch_size=cfg.batch_size, out=out / "features",
                                       settings=settings, rank=rank, world=world, progress=cfg.progress)
        return on_rank0(lambda: _write_outputs(cfg, feats, list(tests), run_dir), rank, world)


def _write_outputs(cfg: HProbeConfig, feats, groups: Sequence[str], run_dir: RunDir) -> dict[str, list[dict]]:
    import matplotlib.pyplot as plt

    from analysis.hprobe.plots import plot_pca_panels
    from analysis.hspace.plots import save_figure

    out = Path(cfg.out)
    rows = fit_and_score(feats, cfg.t, groups, seed=cfg.seed, folds=cfg.folds, jobs=cfg.jobs)
    tests = probe_tests(rows)
    rows = [{k: v for k, v in r.items() if k != "per_image"} for r in rows]
    write_csv(out / "probe.csv", rows, PROBE_COLUMNS)
    write_csv(out / "probe_tests.csv", tests, TEST_COLUMNS)
    atomic_write_text(out / "probe.md", probe_markdown(rows, tests))
    pca_t = cfg.pca_t if cfg.pca_t is not None else sorted(cfg.t)[len(cfg.t) // 2]
    i = list(cfg.t).index(pca_t)
    proj = pca_projection(feats["train"][0]["h"][i], {g: feats[g][0]["h"][i] for g in groups}, seed=cfg.seed)
    fig = plot_pca_panels(proj, {g: feats[g][1] for g in ("train", *groups)}, ["train", *groups],
                          max_classes=cfg.pca_classes, class_names=_class_names(cfg),
                          title=f"h of x_t at t = {pca_t}: 2-D PCA of the train images' h")
    save_figure(fig, out / "pca")
    plt.close(fig)
    atomic_write_text(out / "summary.json", json.dumps({"settings": cfg.settings(), "pca_t": pca_t, "rows": rows,
                                                        "tests": tests}, indent=1))
    run_dir.finish({"rows": len(rows), "tests": len(tests)})
    return {"rows": rows, "tests": tests}


def _class_names(cfg: HProbeConfig) -> dict[int, str]:
    """0-based label -> class name of the CUB root the probe was fitted on."""
    from cubdata import mini_cub_root, read_cub

    idx = read_cub(cfg.cub_root or mini_cub_root())
    return {int(cid) - 1: str(name) for cid, name in idx.classes.items()}


def build_parser() -> argparse.ArgumentParser:
    from analysis import hprobe

    p = ArgumentParser(prog="python -m analysis.hprobe", description=hprobe.__doc__)
    add_config_arguments(p, HProbeConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_args(HProbeConfig, build_parser().parse_args(argv))

    def work() -> dict[str, list[dict]]:
        if cfg.quick:
            from corruptions import get_corruption

            get_corruption(cfg.quick_corruption)  # an unknown name: the valid ones
        return run_probe(cfg)

    def report(result: dict[str, list[dict]]) -> None:
        print(probe_markdown(result["rows"], result["tests"]))
        print(f"outputs in {cfg.out}")

    return run_cli(work, config=cfg, report=report, out=cfg.out)
