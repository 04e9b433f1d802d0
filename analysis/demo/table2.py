"""The Table 2 demo (`make demo` = ``python -m analysis.classify`` with no arguments): a synthetic smoke
benchmark on the built-in mini-CUB. Builds the degraded copies, takes the shipped demo classifiers and restorers
(three restorer seeds per row; ``--retrain`` trains them from scratch instead), restores, scores, flags any set on
which one class takes over half of a classifier's predictions, and prints the table with the commands for real
data. Everything is cached under `cubdata.cache_dir`, keyed by the recipes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.predict import resolve_device
from corruptions import get_corruption_names
from runkit.files import atomic_write_text, sha256_file
from cubdata import cache_dir
from runkit.runtime import torch_threads

from analysis.classify import CLEAN, DEGRADED, SetSpec, Table2Spec, finish_table2, score_table2, slug
from analysis.classify.cli import DEMO_OUT, OUTPUT_FILES
from analysis.demo.classifiers import demo_classifiers
from analysis.demo.restorers import RESTORER_LABELS

log = logging.getLogger(__name__)

__all__ = ["DEMO_ROWS", "DEMO_CORRUPTIONS", "DEMO_SEVERITY", "DEMO_OUT", "REAL_DATA_COMMANDS", "COLLAPSE_SHARE",
           "collapsed_sets", "collapse_note", "demo_spec", "run_demo", "main_demo"]

#: Every registered corruption (`corruptions.get_corruption_names`): a newly registered one joins the demo.
DEMO_CORRUPTIONS = tuple(get_corruption_names())
#: The demo table's rows after "clean".
DEMO_ROWS = (DEGRADED,) + RESTORER_LABELS
DEMO_SEVERITY = 3
REAL_DATA_COMMANDS = """\
# the README's "Real-data workflow" for low light (fog and rain alike; every line is in the README)
# 1. degraded copies of the test split (fog / rain / low light; severity 3 here, 1-5 possible)
python -m corruptions.degrade --cub-root data/CUB_200_2011 --out data/cub-degraded --severities 3
# 2. classifiers on clean CUB (ImageNet weights in the torch hub cache, or --weights PATH)
python -m classifiers.finetune --arch resnet50 --cub-root data/CUB_200_2011 --out runs/resnet50
# 3. restoration networks without / with DiffLoss (prior: 256x256_diffusion_uncond.pt)
python -m restoration.train --net iat --pairs data/LOL --diffloss off --out runs/lowlight-wo
python -m restoration.train --net iat --pairs data/LOL --diffloss on --prior ckpt/256x256_diffusion_uncond.pt --out runs/lowlight-w
# 4. restored copies of the degraded test split
python -m restoration.restore --ckpt runs/lowlight-wo --cub-root data/cub-degraded/lowlight/3 --out data/restored/lowlight-wo
python -m restoration.restore --ckpt runs/lowlight-w --cub-root data/cub-degraded/lowlight/3 --out data/restored/lowlight-w
# 5. the table (table2.yaml: docs/table2.md)
python -m analysis.classify --spec table2.yaml"""


def _restorers_available():
    """``(demo_restorer_replicates, restore_cub_root)`` or ``None`` with the reason, if they cannot be imported."""
    try:
        from restoration.restore import restore_cub_root
        from analysis.demo.restorers import demo_restorer_replicates
    except ImportError as err:
        return None, f"{type(err).__name__}: {err}"
    return (demo_restorer_replicates, restore_cub_root), ""


def _timed(what: str, make, *args, **kwargs):
    """``make(*args, **kwargs)``, logging how long it took to get ``what`` ready."""
    t0 = time.perf_counter()
    result = make(*args, **kwargs)
    log.info("%s ready in %.1f s", what, time.perf_counter() - t0)
    return result


def _degraded_roots(mini: Path, base: Path, progress: bool) -> dict[str, Path]:
    """Every demo corruption's severity-`DEMO_SEVERITY` copy of mini-CUB's test split (built once, cached)."""
    from corruptions.degrade import build_degraded_cub
    from cubdata import MINI_VERSION

    out = base / f"demo-degraded-{MINI_VERSION}"
    build_degraded_cub(mini, out, corruptions=DEMO_CORRUPTIONS, severities=(DEMO_SEVERITY,), split="test",
                       workers=1, seed=0, progress=progress)
    return {c: out / c / str(DEMO_SEVERITY) for c in DEMO_CORRUPTIONS}


def _restored_sets(restore_cub_root, restorers: dict, degraded: dict[str, Path], base: Path, device: str,
                   progress: bool) -> list[SetSpec]:
    """One set per restorer row (`RESTORER_LABELS`) and corruption, holding one root per restorer seed: the
    degraded copy restored by that seed's restorer (``restorers[corruption][row][k]``), cached by the
    restorer's SHA-256 (a ``.complete`` marker per finished copy)."""
    sets = []
    for config in RESTORER_LABELS:
        for c in DEMO_CORRUPTIONS:
            roots = []
            for ckpt in map(Path, restorers[c][config]):
                dst = base / "demo-restored" / f"{slug(config)}-{c}-{sha256_file(ckpt)[:12]}"
                marker = dst / ".complete"
                if not marker.is_file():
                    restore_cub_root(ckpt, degraded[c], dst, device=str(resolve_device(device)), split="test",
                                     progress=progress)
                    atomic_write_text(marker, f"{ckpt}\n")
                roots.append(str(dst))
            sets.append(SetSpec(config, c, tuple(roots)))
    return sets


def _restorer_note(seeds) -> str:
    from analysis.demo.restorers import DEMO_SETTINGS as ds

    return (f"The demo restorers are tiny nets ({ds['net']}) trained on synthetic mini-CUB pairs of the train split, "
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) per row: per seed an L2 warm-up of "
            f"{ds['warmup_steps']} steps (lr {ds['lr']:g}), then {ds['steps']} steps (lr {ds['phase_lr']:g}) with L2 only "
            f"('{RESTORER_LABELS[0]}') or L2 + DiffLoss ('{RESTORER_LABELS[1]}') against the built-in prior (a 64 px ADM "
            f"trained on mini-CUB's clean train split) with gamma = {ds['gamma']:g}, lambda = {ds['lam']:g}, chosen "
            "on mini-CUB's separate validation draw by the rule of benchmarks/diffloss_sweep.py (docs/prior.md). "
            "Cells of several seeds show the mean over the seeds; read the paired comparisons (Delta with its "
            "two-level CI, Holm-corrected p) for whether two rows differ.")


#: A set is flagged when one class takes more than this share of a classifier's predictions on it.
COLLAPSE_SHARE = 0.5


def collapsed_sets(preds, class_names: dict[int, str], share: float = COLLAPSE_SHARE) -> list[dict[str, Any]]:
    """The scored sets on which one class takes more than ``share`` of a classifier's predictions: one dict per
    (config, degradation, classifier, replicate) with ``class_name``, ``count`` and ``n``. ``preds``:
    `analysis.classify.Predictions`; ``class_names``: 0-based label -> name."""
    found = []
    for p in preds:
        if p.config == CLEAN and p.degradation == CLEAN:
            continue
        labels, counts = np.unique(p.pred, return_counts=True)
        k = int(np.argmax(counts))
        if counts[k] > share * len(p.pred):
            found.append({"config": p.config, "degradation": p.degradation, "classifier": p.classifier,
                          "replicate": int(p.replicate), "class_name": class_names[int(labels[k])],
                          "count": int(counts[k]), "n": int(len(p.pred))})
    return found


def collapse_note(found: list[dict[str, Any]], seeds_by_config: dict[str, int]) -> str | None:
    """One note naming every collapsed set (`collapsed_sets`), or None when there is none."""
    if not found:
        return None
    parts = []
    for f in found:
        seed = f" (seed #{f['replicate'] + 1})" if seeds_by_config.get(f["config"], 1) > 1 else ""
        parts.append(f"{f['config']}/{f['degradation']}{seed} {f['classifier']} {f['count']}/{f['n']} "
                     f"'{f['class_name']}'")
    return (f"Collapsed predictions: on these sets one class takes more than {COLLAPSE_SHARE:.0%} of a classifier's "
            "predictions, so their cells measure a collapse rather than what the images show: " + "; ".join(parts) + ".")


def demo_spec(cache: str | Path | None = None, device: str = "auto", progress: bool = True,
              restore: bool = True, retrain: bool = False) -> tuple[Table2Spec, list[str]]:
    """Build everything the demo scores: mini-CUB, its severity-3 test copies for every registered corruption
    (`corruptions.degrade.build_degraded_cub`), the two small classifiers (`demo_classifiers`) and, unless
    ``restore`` is False, the copies restored by the demo restorers of every seed in `DEMO_SEEDS` (rows
    `RESTORER_LABELS`, one root per seed). Classifiers and restorers are the shipped ones unless ``retrain``
    (then trained from scratch in the cache). All cached under ``cache`` (default `cubdata.cache_dir`).
    Returns the spec and notes for the reader."""
    from cubdata import mini_cub_root

    from analysis.demo.restorers import DEMO_SEEDS

    base = Path(cache) if cache is not None else cache_dir()
    mini = mini_cub_root(base)
    degraded = _timed("degraded mini-CUB", _degraded_roots, mini, base, progress)
    ckpts = _timed("demo classifiers", demo_classifiers, base / "demo-classifiers", device=device, progress=progress,
                   retrain=retrain)
    sets = [SetSpec(DEGRADED, c, str(degraded[c])) for c in DEMO_CORRUPTIONS]
    funcs, reason = _restorers_available() if restore else (None, "restoration disabled (--no-restore)")
    if funcs is None:
        notes = [f"Restoration rows (w/o / w/ DiffLoss) are absent: {reason}. Rows: {CLEAN} and {DEGRADED} only."]
    else:
        replicates, restore_cub_root = funcs
        restorers = _timed("demo restorers", replicates, DEMO_CORRUPTIONS, DEMO_SEVERITY, DEMO_SEEDS,
                           cache=base / "demo-restorers", retrain=retrain)
        sets += _timed("restored copies", _restored_sets, restore_cub_root, restorers, degraded, base, device, progress)
        notes = [_restorer_note(DEMO_SEEDS)]
    return Table2Spec(str(mini), {a: str(p) for a, p in ckpts.items()}, sets), notes


def run_demo(out: str | Path = DEMO_OUT, device: str = "auto", batch_size: int = 64, workers: int = 0,
             n_boot: int = 1000, seed: int = 0, progress: bool = True, restore: bool = True,
             cache: str | Path | None = None, threads: int | None = 1, retrain: bool = False) -> dict[str, Any]:
    """The embedded default: `demo_spec`, then `analysis.classify.score_table2`, the collapse check
    (`collapsed_sets`: a note naming every set on which one class takes over half of a classifier's
    predictions) and `analysis.classify.finish_table2` into ``out``. Returns `finish_table2`'s dict plus
    ``notes``, ``collapsed`` and ``seconds``.

    ``threads``: torch CPU threads for the whole run (restored afterwards; ``None`` leaves torch's setting
    alone). 1 by default: the demo's nets are tiny, and on a shared 2-core machine two intra-op threads
    competing with another process made restoration 2.5-10x slower (measured: 2.8 s vs 7-28 s per set).
    """
    from cubdata import read_cub

    t0 = time.perf_counter()
    with torch_threads(threads):
        spec, notes = demo_spec(cache, device=device, progress=progress, restore=restore, retrain=retrain)
        preds, meta = score_table2(spec, device=device, batch_size=batch_size, workers=workers, progress=progress)
        names = {cid - 1: name for cid, name in read_cub(spec.clean).classes.items()}
        found = collapsed_sets(preds, names)
        note = collapse_note(found, {s.config: len(s.roots) for s in spec.sets})
        notes = notes + ([note] if note else [])
        meta.update({"synthetic": True, "benchmark": "built-in mini-CUB (synthetic smoke benchmark)",
                     "severity": DEMO_SEVERITY, "notes": notes, "collapsed": found, "retrain": bool(retrain)})
        result = finish_table2(preds, meta, out, n_boot=n_boot, seed=seed)
    result.update(notes=notes, collapsed=found, seconds=time.perf_counter() - t0)
    return result


def main_demo(args) -> int:
    """The demo's command line (``python -m analysis.classify`` without --classifier, --spec or
    --from-predictions): runs `run_demo` with the parsed ``args`` and prints the table, the notes and the
    commands for real data."""
    if args.bbox_crop:
        raise ValueError("--bbox-crop applies to real data; the demo scores whole images")
    out = Path(args.out or DEMO_OUT)
    names = " / ".join(DEMO_CORRUPTIONS)
    print("Embedded demo: a SYNTHETIC SMOKE BENCHMARK on the built-in mini-CUB (10 made-up classes, 120 test "
          f"images; {names} at severity {DEMO_SEVERITY}). It shows that the pipeline runs and that "
          "effects have the expected sign; its numbers say nothing about real birds or about the paper.\n",
          flush=True)
    result = run_demo(out, device=args.device, batch_size=args.batch_size, workers=0, n_boot=args.n_boot,
                      seed=args.seed, progress=args.progress, restore=args.restore, threads=args.threads or 1,
                      retrain=args.retrain)
    print(result["markdown"])
    for note in result["notes"]:
        print(f"NOTE: {note}\n")
    print(f"written: {out}/{OUTPUT_FILES} (whole run {result['seconds']:.0f} s)\n")
    print("For the real Table 2 (CUB-200-2011 from data.caltech.edu, ImageNet-pretrained VGG16/ResNet50):\n")
    print(REAL_DATA_COMMANDS)
    return 0
