"""Rebuild the demo's shipped weights from scratch: ``python -m analysis.demo.ship``.

Trains the two demo classifiers (`analysis.demo.classifiers.DEMO_FINETUNE`) and, for every corruption of the
demo and every seed of `analysis.demo.restorers.DEMO_SEEDS`, the restorers without and with DiffLoss
(`analysis.demo.restorers.DEMO_SETTINGS`), all from scratch in ``--cache``, then writes each as
``NAME.safetensors`` (float16) + ``NAME.json`` (this command, the recipe and its digest, seeds, step counts,
the SHA-256) into ``--out`` (default: the package's ``analysis/demo/weights``). Training is deterministic on
one machine; on another CPU, float differences make the retrained weights a new draw of the same recipe (the
seed-to-seed spread in docs/table2.md shows how far such draws lie apart).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from runkit.cli import ArgumentParser
from runkit.errors import run_cli

log = logging.getLogger(__name__)

__all__ = ["ship_demo_weights", "main", "COMMAND"]

COMMAND = "python -m analysis.demo.ship"


def _ship_classifiers(cache: Path, out: Path, progress: bool, command: str) -> list[str]:
    from classifiers.checkpoint import read_checkpoint

    from analysis.demo.classifiers import DEMO_FINETUNE, classifier_recipe, demo_classifiers, shipped_classifier_name
    from analysis.demo.weights import recipe_digest, write_shipped

    names = []
    for arch, path in demo_classifiers(cache / "demo-classifiers", device="cpu", progress=progress,
                                       retrain=True).items():
        ckpt = read_checkpoint(path)
        recipe = classifier_recipe(arch, dict(DEMO_FINETUNE))
        name = shipped_classifier_name(arch)
        write_shipped(name, ckpt["state_dict"], {
            "kind": "classifier", "command": command, "recipe": recipe, "recipe_digest": recipe_digest(recipe),
            "arch": arch, "num_classes": int(ckpt["num_classes"]), "class_names": list(ckpt["class_names"]),
            "preprocess": ckpt["preprocess"], "protocol": ckpt["protocol"], "epochs": int(ckpt["epochs"]),
            "seed": DEMO_FINETUNE["seed"], "clean_test_top1": ckpt["clean_test_top1"]}, out)
        names.append(name)
    return names


def _ship_restorers(cache: Path, out: Path, progress: bool, command: str) -> list[str]:
    from restoration.checkpoint import read_checkpoint_file

    from analysis.demo.restorers import DEMO_SEEDS, DEMO_SETTINGS, RESTORER_LABELS, demo_restorer_replicates, \
        restorer_recipe, shipped_restorer_name
    from analysis.demo.table2 import DEMO_CORRUPTIONS, DEMO_SEVERITY
    from analysis.demo.weights import recipe_digest, write_shipped

    reps = demo_restorer_replicates(DEMO_CORRUPTIONS, DEMO_SEVERITY, DEMO_SEEDS, cache / "demo-restorers",
                                    progress=progress, retrain=True)
    names = []
    for corruption, by_label in reps.items():
        for label in RESTORER_LABELS:
            for seed, path in zip(DEMO_SEEDS, by_label[label]):
                ckpt = read_checkpoint_file(path)
                recipe = restorer_recipe(corruption, DEMO_SEVERITY, seed, label, DEMO_SETTINGS)
                name = shipped_restorer_name(corruption, DEMO_SEVERITY, seed, label)
                write_shipped(name, ckpt["state_dict"], {
                    "kind": "restorer", "command": command, "label": label, "recipe": recipe,
                    "recipe_digest": recipe_digest(recipe), "net": ckpt["net"], "net_kwargs": ckpt["net_kwargs"],
                    "seed": seed, "step": int(ckpt["step"]),
                    "steps": {"warmup": DEMO_SETTINGS["warmup_steps"], "phase": DEMO_SETTINGS["steps"]},
                    "val": ckpt.get("val"), "config": ckpt["config"]}, out)
                names.append(name)
    return names


def ship_demo_weights(out: str | Path, cache: str | Path, progress: bool = False, command: str = COMMAND) -> dict:
    """Train every demo network from scratch in ``cache`` and write the shipped files into ``out``, each recording
    ``command`` (the command line that ran this). Returns ``{"names", "bytes", "seconds"}``."""
    from analysis.demo.weights import shipped_path

    out, cache = Path(out), Path(cache)
    t0 = time.perf_counter()
    names = _ship_classifiers(cache, out, progress, command) + _ship_restorers(cache, out, progress, command)
    size = sum(shipped_path(n, out).stat().st_size + shipped_path(n, out).with_suffix(".json").stat().st_size
               for n in names)
    return {"names": names, "bytes": size, "seconds": time.perf_counter() - t0}


def build_parser() -> ArgumentParser:
    from analysis.demo.weights import WEIGHTS_DIR

    p = ArgumentParser(prog="python -m analysis.demo.ship", description=__doc__)
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="folder of the shipped files")
    p.add_argument("--cache", default="runs/demo-ship", help="folder the networks are trained in (reused: a "
                   "finished run is not trained again)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    command = " ".join([COMMAND, *argv])

    def work() -> dict:
        return ship_demo_weights(args.out, args.cache, progress=args.progress, command=command)

    def report(summary: dict) -> None:
        print(f"wrote {len(summary['names'])} shipped files ({summary['bytes'] / 2**20:.1f} MiB) into {args.out} "
              f"in {summary['seconds']:.0f} s")

    return run_cli(work, threads=args.threads, report=report)


if __name__ == "__main__":
    sys.exit(main())
