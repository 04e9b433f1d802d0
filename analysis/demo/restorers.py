"""The demo's restorers: the small built-in net on synthetic mini-CUB pairs, without and with DiffLoss, one pair
of arms per restorer seed.

Used by the Table 2 demo (`analysis.demo.table2`), the h-space quick mode, the naturalness report's quick mode
and the gamma/lambda sweep (benchmarks/diffloss_sweep.py). The shipped weights (`analysis.demo.weights`) are used
while the recipe matches; otherwise the restorers are trained, cached under ``cubdata.cache_dir()/"demo-restorers"``.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from cubdata import MINI_VERSION, cache_dir
from runkit.files import atomic_save_torch, sha256_file
from runkit.rundir import RunDir
from runkit.runtime import count_parameters, torch_threads
from restoration.checkpoint import CKPT_FORMAT
from restoration.nets import DEFAULT_NET, build_net, pad_multiple_of
from restoration.train import TrainConfig, train_restoration
from restoration.train.loop import COMMAND, OUTPUTS

from analysis.demo.weights import read_shipped, recipe_digest, shipped_info

log = logging.getLogger(__name__)

__all__ = ["DEMO_SETTINGS", "DEMO_SEEDS", "RESTORER_LABELS", "ensure_demo_restorers", "demo_restorer_replicates",
           "restorer_recipe", "shipped_restorer_name"]

#: The two restoration rows of the demo's Table 2 (and groups of the h-space quick mode), in order.
RESTORER_LABELS = ("w/o DiffLoss", "w/ DiffLoss")
#: The restorer seeds of the demo's replicates: each seed has its own warm-up and its own pair of arms.
DEMO_SEEDS = (0, 1, 2)

#: CPU schedule of the demo restorers, per seed: an L2 warm-up (``warmup_steps`` at ``lr``), then ``steps`` more
#: at ``phase_lr`` (continuing the warm-up's weights and Adam state) with L2 only ("w/o DiffLoss") or L2 +
#: DiffLoss against the built-in trained prior ("w/ DiffLoss"). crop 64 = the prior's size, so DiffLoss sees
#: the crop as is. The lower ``phase_lr`` anneals both arms alike: at a constant 2e-3 the fog net's validation
#: PSNR went down again between 600 and 1200 steps. ``gamma``/``lam`` were chosen by
#: benchmarks/diffloss_sweep.py on mini-CUB's separate validation draw with the rule written there (docs/prior.md).
#: ``seed``: the one seed `ensure_demo_restorers` trains (the replicates use `DEMO_SEEDS`). ``val_images``: the
#: train split's held-out part (``val_fraction`` of each class) that each run validates on at its end.
#: ``cub_root``: the CUB root of the synthetic pairs (None: the built-in mini-CUB).
DEMO_SETTINGS = dict(net=DEFAULT_NET, net_kwargs={}, crop=64, batch_size=4, lr=2e-3, warmup_steps=600,
                     phase_lr=5e-4, steps=100, prior="builtin", gamma=1.0, lam=0.01, target="eps", seed=0,
                     val_images=10, val_fraction=0.1, cub_root=None)


def _pairs(corruption: str, severity: int, s: Mapping[str, Any]) -> str:
    root = s.get("cub_root")
    return f"synthetic:{corruption}:{int(severity)}" + (f":{root}" if root else "")

_ARMS = {"warmup": "warmup", RESTORER_LABELS[0]: "wo", RESTORER_LABELS[1]: "w"}


def _prior_sha(prior: str) -> str | None:
    """The SHA-256 of the prior's weights file (None for a randomly initialised prior): the w/ DiffLoss arm
    depends on it, so a new built-in prior never meets old restorers."""
    from diffloss.prior import resolve_prior

    path = resolve_prior(prior).path
    return None if path is None else sha256_file(path)


def restorer_recipe(corruption: str, severity: int, seed: int, arm: str, settings: Mapping[str, Any]) -> dict:
    """Everything the weights of one demo restorer depend on: ``arm`` is ``"warmup"`` or a `RESTORER_LABELS`
    entry; the DiffLoss settings (and the prior's SHA-256) only for "w/ DiffLoss", the phase only after the
    warm-up. Its `recipe_digest` names the shipped file that stands for it."""
    if arm not in _ARMS:
        raise ValueError(f"unknown demo restorer arm {arm!r}; valid: {sorted(_ARMS)}")
    s = settings
    recipe = {"mini": MINI_VERSION, "pairs": _pairs(corruption, severity, s), "seed": int(seed),
              "net": s["net"], "net_kwargs": dict(s["net_kwargs"]), "crop": s["crop"], "batch_size": s["batch_size"],
              "lr": s["lr"], "warmup_steps": s["warmup_steps"], "val_fraction": s["val_fraction"], "arm": arm}
    if arm != "warmup":
        recipe.update(phase_lr=s["phase_lr"], steps=s["steps"])
    if arm == RESTORER_LABELS[1]:
        recipe.update(prior_sha256=_prior_sha(s["prior"]), gamma=s["gamma"], lam=s["lam"], target=s["target"])
    return recipe


def shipped_restorer_name(corruption: str, severity: int, seed: int, arm: str) -> str:
    """The shipped file of a demo restorer: ``restorer-fog3-seed0-wo`` / ``...-w``."""
    return f"restorer-{corruption}{int(severity)}-seed{int(seed)}-{_ARMS[arm]}"


def _materialise(name: str, root: Path) -> Path | None:
    """The shipped restorer ``name`` as a ``ckpt.pt`` of `restoration.train` under ``root/"shipped"`` (written
    once); None when it is not shipped."""
    info = shipped_info(name)
    if info is None:
        return None
    dst = root / "shipped" / f"{name}-{info['sha256'][:12]}" / "ckpt.pt"
    if dst.is_file():
        return dst
    state, info = read_shipped(name)
    with torch.random.fork_rng(devices=[]):
        net = build_net(info["net"], **info["net_kwargs"])
    net.load_state_dict(state)
    atomic_save_torch({"format": CKPT_FORMAT, "net": info["net"], "net_kwargs": dict(info["net_kwargs"]),
                       "pad_multiple": pad_multiple_of(net), "num_parameters": count_parameters(net),
                       "state_dict": net.state_dict(), "step": int(info["step"]), "world_size": 1,
                       "config": info["config"], "val": info.get("val"), "final": True,
                       "shipped": {"name": name, "sha256": info["sha256"]},
                       "torch_version": str(torch.__version__)}, dst)
    return dst


def _run(cfg: TrainConfig) -> Path:
    """Train (or reuse) one run; a folder of an older recipe (our own cache) is replaced."""
    try:
        RunDir(cfg.out, COMMAND, cfg, outputs=OUTPUTS).check()
    except ValueError:
        shutil.rmtree(cfg.out)
    return train_restoration(cfg)


def _train_seed(corruption: str, severity: int, seed: int, s: Mapping[str, Any], base: Path, labels: Sequence[str],
                progress: bool) -> dict[str, Path]:
    """Train (or reuse) one seed's warm-up and the arms ``labels``; ``{label: ckpt.pt}``."""
    common = dict(pairs=_pairs(corruption, severity, s), net=s["net"], net_kwargs=dict(s["net_kwargs"]), crop=s["crop"],
                  batch_size=s["batch_size"], seed=int(seed), val_every=0, ckpt_every=0, val_images=s["val_images"],
                  val_fraction=s["val_fraction"], progress=progress, plot=False)
    folder = base / f"{corruption}-{int(severity)}" / f"seed{int(seed)}"
    warm = _run(TrainConfig(out=str(folder / "warmup"), steps=s["warmup_steps"], lr=s["lr"], **common))
    runs = {}
    for label in labels:
        on = label == RESTORER_LABELS[1]
        if on:
            tag = (_prior_sha(s["prior"]) or "random")[:10]
            sub = f"w-diffloss-{tag}-g{s['gamma']:g}-l{s['lam']:g}-{s['target']}"
            extra = dict(prior=s["prior"], gamma=s["gamma"], lam=s["lam"], target=s["target"])
        else:
            sub, extra = "wo-diffloss", {}
        run = _run(TrainConfig(out=str(folder / sub), steps=s["steps"], lr=s["phase_lr"], diffloss=on,
                               init=str(warm / "ckpt.pt"), init_optimizer=True, **extra, **common))
        runs[label] = run / "ckpt.pt"
    return runs


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    s = dict(DEMO_SETTINGS, **(settings or {}))
    unknown = set(s) - set(DEMO_SETTINGS)
    if unknown:
        raise ValueError(f"unknown demo setting(s) {sorted(unknown)}; valid: {sorted(DEMO_SETTINGS)}")
    return s


def demo_restorer_replicates(corruptions=("fog", "rain", "lowlight"), severity: int = 3,
                             seeds: Sequence[int] = DEMO_SEEDS, cache: str | os.PathLike | None = None,
                             progress: bool = False, threads: int | None = 1,
                             settings: Mapping[str, Any] | None = None, variants: bool = True,
                             retrain: bool = False) -> dict[str, dict[str, list[Path]]]:
    """The demo restorers of every seed in ``seeds``: ``{corruption: {label: [ckpt.pt per seed]}}`` (labels
    `RESTORER_LABELS`; ``variants=False``: "w/o DiffLoss" only).

    Each restorer is the shipped one (`analysis.demo.weights`, written out once as a ``ckpt.pt`` under
    ``cache/"shipped"``) when its `restorer_recipe` has the digest recorded beside the shipped file and
    ``retrain`` is False; otherwise it is trained (`DEMO_SETTINGS`, updated with ``settings``: per seed an L2
    warm-up, then the arms continue it) and cached under ``cache`` (default ``cubdata.cache_dir()/"demo-restorers"``),
    reused while the recipe is unchanged. ``threads``: torch CPU threads while training (restored afterwards;
    1 by default: these nets gain nothing from more, and an oversubscribed shared CPU makes multi-threaded
    steps several times slower; None leaves the setting alone).
    """
    s = _settings(settings)
    if isinstance(corruptions, str):
        corruptions = (corruptions,)
    root = Path(cache) if cache is not None else cache_dir() / "demo-restorers"
    labels = RESTORER_LABELS if variants else RESTORER_LABELS[:1]
    out: dict[str, dict[str, list[Path]]] = {}
    with torch_threads(threads):
        for corruption in corruptions:
            t0 = time.perf_counter()
            out[corruption] = {label: [] for label in labels}
            for seed in seeds:
                found = {} if retrain else _shipped(corruption, severity, seed, labels, s, root)
                missing = [label for label in labels if label not in found]
                if missing:
                    found.update(_train_seed(corruption, severity, seed, s, root, missing, progress))
                for label in labels:
                    out[corruption][label].append(found[label])
            log.info("demo restorers for %s:%d, seeds %s, ready in %.1f s", corruption, severity, list(seeds),
                     time.perf_counter() - t0)
    return out


def _shipped(corruption, severity, seed, labels, s, root) -> dict[str, Path]:
    """``{label: ckpt.pt}`` of the arms whose shipped file stands for the recipe ``s`` asks for."""
    found = {}
    for label in labels:
        name = shipped_restorer_name(corruption, severity, seed, label)
        info = shipped_info(name)
        want = recipe_digest(restorer_recipe(corruption, severity, seed, label, s))
        if info is not None and info.get("recipe_digest") == want:
            found[label] = _materialise(name, root)
        elif info is not None:
            log.info("shipped %s is for another recipe (%s, want %s): training instead (the shipped weights "
                     "are rebuilt by python -m analysis.demo.ship)", name, info.get("recipe_digest"), want)
    return found


def ensure_demo_restorers(corruptions=("fog", "rain", "lowlight"), severity: int = 3,
                          cache: str | os.PathLike | None = None, progress: bool = False,
                          threads: int | None = 1, settings: Mapping[str, Any] | None = None,
                          variants: bool = True, retrain: bool = False) -> dict[str, dict[str, Path]]:
    """The demo restorers of one seed (``settings["seed"]``, default `DEMO_SETTINGS`' 0), as
    `demo_restorer_replicates` gives them: ``{corruption: {"w/o DiffLoss": Path(ckpt.pt), "w/ DiffLoss":
    Path(ckpt.pt)}}``."""
    s = _settings(settings)
    reps = demo_restorer_replicates(corruptions, severity, (s["seed"],), cache, progress, threads, s, variants,
                                    retrain)
    return {c: {label: paths[0] for label, paths in by_label.items()} for c, by_label in reps.items()}
