"""The Table 2 demo (`make demo` = ``python -m analysis.classify`` with no arguments): a synthetic smoke
benchmark on the built-in mini-CUB. Builds the degraded copies, the demo classifiers and restorers, restores,
scores and prints the table with the commands for real data. Everything is cached under
`cubdata.cache_dir`, keyed by the recipes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from classifiers.predict import resolve_device
from corruptions import get_corruption_names
from runkit.files import atomic_write_text, sha256_file
from cubdata import cache_dir
from runkit.runtime import torch_threads

from analysis.classify import CLEAN, DEGRADED, SetSpec, Table2Spec, run_table2, slug
from analysis.classify.cli import DEMO_OUT, OUTPUT_FILES
from analysis.demo.classifiers import demo_classifiers
from analysis.demo.restorers import RESTORER_LABELS

log = logging.getLogger(__name__)

__all__ = ["DEMO_ROWS", "DEMO_CORRUPTIONS", "DEMO_SEVERITY", "DEMO_OUT", "REAL_DATA_COMMANDS", "demo_spec", "run_demo", "main_demo"]

#: Every registered corruption (`corruptions.get_corruption_names`): a newly registered one joins the demo.
DEMO_CORRUPTIONS = tuple(get_corruption_names())
#: The demo table's rows after "clean".
DEMO_ROWS = (DEGRADED,) + RESTORER_LABELS
DEMO_SEVERITY = 3
REAL_DATA_COMMANDS = """\
# 1. degraded copies of the clean CUB test split (fog / rain / low light, severity 3)
python -m corruptions.degrade --cub-root data/CUB_200_2011 --out data/cub-degraded --severities 3
# 2. classifiers fine-tuned on clean CUB (ImageNet weights from the torch hub cache, or --weights PATH offline)
python -m classifiers.finetune --arch resnet50 --cub-root data/CUB_200_2011 --out ckpt/resnet50.pt
python -m classifiers.finetune --arch vgg16 --cub-root data/CUB_200_2011 --out ckpt/vgg16.pt
# 3. restoration networks without / with DiffLoss (here low light on LOL; fog: Dense-Haze, rain: Rain13K)
python -m restoration.train --net iat --pairs data/LOL --diffloss off --out runs/iat-lol-l2
python -m restoration.train --net iat --pairs data/LOL --diffloss on --prior ckpt/256x256_diffusion_uncond.pt \\
    --out runs/iat-lol-diffloss
# 4. restored copies of the degraded test split
python -m restoration.restore --ckpt runs/iat-lol-l2 --cub-root data/cub-degraded/lowlight/3 --out data/restored/lowlight-wo
python -m restoration.restore --ckpt runs/iat-lol-diffloss --cub-root data/cub-degraded/lowlight/3 --out data/restored/lowlight-w
# 5. the table (one --set per row and degradation, or all of it in a --spec YAML file)
python -m analysis.classify --cub-root data/CUB_200_2011 \\
    --classifier resnet50=ckpt/resnet50.pt --classifier vgg16=ckpt/vgg16.pt \\
    --set "degraded/lowlight=data/cub-degraded/lowlight/3" --set "w/o DiffLoss/lowlight=data/restored/lowlight-wo" \\
    --set "w/ DiffLoss/lowlight=data/restored/lowlight-w" ... --out runs/table2"""


def _restorers_available():
    """``(ensure_demo_restorers, restore_cub_root)`` or ``None`` with the reason, if diffloss lacks them."""
    try:
        from restoration.restore import restore_cub_root
        from analysis.demo.restorers import ensure_demo_restorers
    except ImportError as err:
        return None, f"{type(err).__name__}: {err}"
    return (ensure_demo_restorers, restore_cub_root), ""


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
    """One set per restorer row (`RESTORER_LABELS`) and corruption: the degraded copy restored by that row's
    demo restorer (``restorers[corruption][row]``), cached by the restorer's SHA-256 (a ``.complete`` marker
    per finished copy)."""
    sets = []
    for config in RESTORER_LABELS:
        for c in DEMO_CORRUPTIONS:
            ckpt = Path(restorers[c][config])
            dst = base / "demo-restored" / f"{slug(config)}-{c}-{sha256_file(ckpt)[:12]}"
            marker = dst / ".complete"
            if not marker.is_file():
                restore_cub_root(ckpt, degraded[c], dst, device=str(resolve_device(device)), split="test",
                                 progress=progress)
                atomic_write_text(marker, f"{ckpt}\n")
            sets.append(SetSpec(config, c, str(dst)))
    return sets


def _restorer_note() -> str:
    from analysis.demo.restorers import DEMO_SETTINGS as ds

    return (f"The demo restorers are tiny nets trained for {ds['warmup_steps']} + {ds['steps']} steps on synthetic "
            f"mini-CUB pairs; '{RESTORER_LABELS[-1]}' adds DiffLoss against the built-in prior (a 64 px ADM trained "
            f"on mini-CUB's clean train split) with gamma = {ds['gamma']:g}, lambda = {ds['lam']:g}, chosen on the "
            "separate validation draw (docs/prior.md). Read the McNemar rows for whether the two rows differ "
            "significantly; on 120 images per cell small differences are not.")


def demo_spec(cache: str | Path | None = None, device: str = "auto", progress: bool = True,
              restore: bool = True) -> tuple[Table2Spec, list[str]]:
    """Build everything the demo scores: mini-CUB, its severity-3 test copies for every registered corruption
    (`corruptions.degrade.build_degraded_cub`), the two small classifiers, and, when `diffloss` provides
    them (and ``restore``), the copies restored by the demo restorers (rows `RESTORER_LABELS`). All cached
    under ``cache`` (default `cubdata.cache_dir`). Returns the spec and notes for the reader."""
    from cubdata import mini_cub_root

    base = Path(cache) if cache is not None else cache_dir()
    mini = mini_cub_root(base)
    degraded = _timed("degraded mini-CUB", _degraded_roots, mini, base, progress)
    ckpts = _timed("demo classifiers", demo_classifiers, base / "demo-classifiers", device=device, progress=progress)
    sets = [SetSpec(DEGRADED, c, str(degraded[c])) for c in DEMO_CORRUPTIONS]
    funcs, reason = _restorers_available() if restore else (None, "restoration disabled (--no-restore)")
    if funcs is None:
        notes = [f"Restoration rows (w/o / w/ DiffLoss) are absent: {reason}. Rows: {CLEAN} and {DEGRADED} only."]
    else:
        ensure_demo_restorers, restore_cub_root = funcs
        kw = {} if cache is None else {"cache": base / "demo-restorers"}  # default: cache_dir()/demo-restorers
        restorers = _timed("demo restorers", ensure_demo_restorers, corruptions=DEMO_CORRUPTIONS,
                           severity=DEMO_SEVERITY, **kw)
        sets += _timed("restored copies", _restored_sets, restore_cub_root, restorers, degraded, base, device, progress)
        notes = [_restorer_note()]
    return Table2Spec(str(mini), {a: str(p) for a, p in ckpts.items()}, sets), notes


def run_demo(out: str | Path = DEMO_OUT, device: str = "auto", batch_size: int = 64, workers: int = 0,
             n_boot: int = 1000, seed: int = 0, progress: bool = True, restore: bool = True,
             cache: str | Path | None = None, threads: int | None = 1) -> dict[str, Any]:
    """The embedded default: `demo_spec`, then `run_table2` into ``out``. Returns `run_table2`'s dict plus
    ``notes`` and ``seconds``.

    ``threads``: torch CPU threads for the whole run (restored afterwards; ``None`` leaves torch's setting
    alone). 1 by default: the demo's nets are tiny, and on a shared 2-core machine two intra-op threads
    competing with another process made restoration 2.5-10x slower (measured: 2.8 s vs 7-28 s per set).
    """
    t0 = time.perf_counter()
    with torch_threads(threads):
        spec, notes = demo_spec(cache, device=device, progress=progress, restore=restore)
        meta = {"synthetic": True, "benchmark": "built-in mini-CUB (synthetic smoke benchmark)",
                "severity": DEMO_SEVERITY, "notes": notes}
        result = run_table2(spec, out, device=device, batch_size=batch_size, workers=workers, n_boot=n_boot,
                            seed=seed, progress=progress, extra_meta=meta)
    result.update(notes=notes, seconds=time.perf_counter() - t0)
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
                      seed=args.seed, progress=args.progress, restore=args.restore, threads=args.threads or 1)
    print(result["markdown"])
    for note in result["notes"]:
        print(f"NOTE: {note}\n")
    print(f"written: {out}/{OUTPUT_FILES} (whole run {result['seconds']:.0f} s)\n")
    print("For the real Table 2 (CUB-200-2011 from data.caltech.edu, ImageNet-pretrained VGG16/ResNet50):\n")
    print(REAL_DATA_COMMANDS)
    return 0
