"""Choose the demo's DiffLoss weights (gamma, lambda) on validation images, by a rule fixed before the sweep runs.

    python benchmarks/diffloss_sweep.py --publish   # the documented run (docs/prior.md): 101 min on 2 shared CPU cores
    python benchmarks/diffloss_sweep.py --seeds 0 --corruptions rain --gammas 1 --lams 1 --no-extend   # a quick look

Restorers: the demo's (`analysis.demo.restorers`, its `DEMO_SETTINGS` schedule): per restorer seed an L2 warm-up on
synthetic pairs of mini-CUB's *train* split (``--cub-root``), then the same number of steps with L2 only ("w/o")
or L2 + DiffLoss at each (gamma, lambda) ("w/"), all trained here from scratch (``--out``/demo-restorers; a rerun
reuses finished runs, and so does ``python -m analysis.demo.ship --cache OUT``). Validation: the degraded copies of
mini-CUB's separate validation draw (`mini_cub_root(variant="val")`, the same generator with seed 1; all 200 of its
images, nothing is trained on them), never the benchmark's test split. The training pairs' own validation (each
run's ``val.csv``) is the held-out part of the train split (`cubdata.train_val_split`).
Scores per (corruption, seed, setting): PSNR against the clean validation images, Top-1 of the demo's two
classifiers, and the mean absolute difference from the same seed's w/o restoration (in 1/255).

THE RULE (`choose_setting`), written here and in docs/prior.md before the sweep ran:
1. A setting is *eligible* when, for every corruption, its restorations differ from w/o DiffLoss by at least
   `MIN_EFFECT_255` (0.5/255, mean over images and seeds): smaller changes do not test DiffLoss.
2. Among eligible settings, the highest mean validation Top-1 (both classifiers, every corruption, every seed)
   wins; settings within `TIE_POINTS` (0.1 points) of it tie, and the tie goes to the higher mean PSNR.
3. The grid starts as a cross around (``--gammas``, ``--lams``)' middle values and is *extended* (`missing_neighbours`)
   until the chosen setting is interior: a setting with a gamma ``--step`` times smaller and one ``--step`` times
   larger at its lambda, and a lambda ``--step`` times smaller and larger at its gamma, all evaluated. Each extension
   re-applies 1-2. ``--no-extend`` stops after the first grid (the result then says whether it is interior).
Writes ``sweep.csv`` (one row per corruption, seed and setting), ``settings.csv`` (per setting: the means the
rule reads) and ``choice.json``, and prints the tables and the choice.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from analysis.demo.classifiers import demo_classifiers
from analysis.demo.restorers import DEMO_SEEDS, DEMO_SETTINGS, RESTORER_LABELS, demo_restorer_replicates
from classifiers import eval_transform, load_classifier
from corruptions.degrade import build_degraded_cub
from cubdata import load_rgb, mini_cub_root, read_cub
from restoration.metrics import psnr_ssim
from restoration.restore import restore_cub_root
from runkit.files import atomic_write_text, read_csv, write_csv
from runkit.runtime import torch_threads

COLUMNS = ("corruption", "seed", "setting", "gamma", "lam", "psnr", "ssim", "top1_vgg_mini", "top1_resnet_mini",
           "diff_to_wo_255", "n")
SETTING_COLUMNS = ("gamma", "lam", "top1", "psnr", "min_diff_255", "eligible", "runs")
#: the smallest mean |w - w/o| (1/255) on every corruption for a setting to count as changing the restorer
MIN_EFFECT_255 = 0.5
#: mean Top-1 differences up to this many points are ties (broken by PSNR)
TIE_POINTS = 0.1
#: the validation images: every image (both splits) of mini-CUB's separate validation draw
VAL_SPLIT = "all"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _key(g: float, lam: float) -> tuple[float, float]:
    return float(f"{g:.6g}"), float(f"{lam:.6g}")


# ---------------------------------------------------------------------------------------------- scoring
def score_root(root: Path, clean: dict[int, np.ndarray], classifiers: dict) -> tuple[dict, dict[int, np.ndarray]]:
    """PSNR/SSIM against ``clean`` and Top-1 per classifier of the `VAL_SPLIT` images of the CUB root ``root``."""
    index = read_cub(root)
    records = index.split(VAL_SPLIT)
    images = {r.image_id: load_rgb(index.image_path(r)) for r in records}
    labels = np.array([r.label for r in records])
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float().div(255)[None]  # noqa: E731
    ps, ss = zip(*[(float(p[0]), float(s[0])) for r in records
                   for p, s in [psnr_ssim(t(images[r.image_id]), t(clean[r.image_id]))]])
    out = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "n": len(records)}
    for arch, (model, tf) in classifiers.items():
        with torch.no_grad():
            x = torch.stack([tf(Image.fromarray(images[r.image_id])) for r in records])
            pred = model(x).argmax(1).numpy()
        out[f"top1_{arch.replace('-', '_')}"] = float((pred == labels).mean() * 100)
    return out, images


def _top1(row: dict) -> float:
    return (row["top1_vgg_mini"] + row["top1_resnet_mini"]) / 2


# ---------------------------------------------------------------------------------------------- the rule
def summarize_settings(rows: list[dict]) -> list[dict]:
    """Per (gamma, lambda): mean Top-1 and PSNR over corruptions and seeds, the smallest per-corruption mean
    |w - w/o| and whether that makes the setting eligible (rule 1)."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["setting"] == "w/":
            by.setdefault(_key(r["gamma"], r["lam"]), []).append(r)
    out = []
    for (g, lam), rs in sorted(by.items()):
        diffs = {}
        for r in rs:
            diffs.setdefault(r["corruption"], []).append(r["diff_to_wo_255"])
        min_diff = min(float(np.mean(v)) for v in diffs.values())
        out.append({"gamma": g, "lam": lam, "top1": float(np.mean([_top1(r) for r in rs])),
                    "psnr": float(np.mean([r["psnr"] for r in rs])), "min_diff_255": min_diff,
                    "eligible": min_diff >= MIN_EFFECT_255, "runs": len(rs)})
    return out


def choose_setting(settings: list[dict]) -> dict | None:
    """Rules 1-2 of the module doc: the eligible setting with the highest mean Top-1 (ties within `TIE_POINTS`
    broken by mean PSNR); None when no setting is eligible."""
    ok = [s for s in settings if s["eligible"]]
    if not ok:
        return None
    best = max(s["top1"] for s in ok)
    return max((s for s in ok if s["top1"] >= best - TIE_POINTS), key=lambda s: s["psnr"])


def missing_neighbours(chosen: dict, settings: list[dict], step: float) -> list[tuple[float, float]]:
    """Rule 3: the settings ``step`` times smaller / larger in gamma (same lambda) and in lambda (same gamma)
    around ``chosen`` that have not been evaluated yet (the chosen one is interior when there are none)."""
    done = {_key(s["gamma"], s["lam"]) for s in settings}
    g, lam = chosen["gamma"], chosen["lam"]
    around = [_key(g / step, lam), _key(g * step, lam), _key(g, lam / step), _key(g, lam * step)]
    return [k for k in around if k not in done]


def cross(gammas: list[float], lams: list[float]) -> list[tuple[float, float]]:
    """The first grid: every gamma at the middle lambda, and every lambda at the middle gamma."""
    g0, l0 = sorted(gammas)[len(gammas) // 2], sorted(lams)[len(lams) // 2]
    return list(dict.fromkeys([_key(g, l0) for g in gammas] + [_key(g0, lam) for lam in lams]))


# ---------------------------------------------------------------------------------------------- the runs
class Sweep:
    """The trained restorers, validation images and classifiers of one sweep folder; `rows` grows as settings
    are evaluated (each (corruption, seed, setting) once)."""

    def __init__(self, out: Path, corruptions, severity: int, seeds, cub_root: str | None, progress: bool) -> None:
        self.out, self.corruptions, self.severity, self.seeds = out, list(corruptions), int(severity), list(seeds)
        self.cub_root, self.progress = cub_root, progress
        val = mini_cub_root(variant="val")
        build_degraded_cub(val, out / "val-degraded", corruptions=self.corruptions, severities=(self.severity,),
                           split=VAL_SPLIT, progress=False)
        vindex = read_cub(val)
        self.clean = {r.image_id: load_rgb(vindex.image_path(r)) for r in vindex.split(VAL_SPLIT)}
        self.classifiers = {}
        for arch, ckpt in demo_classifiers(progress=False).items():
            model, info = load_classifier(ckpt)
            self.classifiers[arch] = (model, eval_transform(info["preprocess"]))
        self.rows: list[dict] = []
        self._wo_images: dict[tuple[str, int], dict] = {}

    def _restorer(self, corruption: str, seed: int, gamma: float | None, lam: float | None) -> Path:
        s = {"cub_root": self.cub_root}
        if gamma is not None:
            s.update(gamma=gamma, lam=lam)
        reps = demo_restorer_replicates((corruption,), self.severity, (seed,), cache=self.out / "demo-restorers",
                                        progress=self.progress, settings=s, variants=gamma is not None, retrain=True)
        return reps[corruption][RESTORER_LABELS[1] if gamma is not None else RESTORER_LABELS[0]][0]

    def _score(self, corruption: str, ckpt: Path, name: str) -> tuple[dict, dict]:
        dst = self.out / "restored" / name
        restore_cub_root(ckpt, self.out / "val-degraded" / corruption / str(self.severity), dst, split=VAL_SPLIT,
                         progress=False, overwrite=True)
        return score_root(dst, self.clean, self.classifiers)

    def baselines(self) -> None:
        """The degraded images and every seed's w/o DiffLoss restoration, per corruption."""
        for c in self.corruptions:
            score, _ = score_root(self.out / "val-degraded" / c / str(self.severity), self.clean, self.classifiers)
            self.rows.append({"corruption": c, "seed": None, "setting": "degraded", **score})
            for seed in self.seeds:
                score, images = self._score(c, self._restorer(c, seed, None, None), f"{c}-s{seed}-wo")
                self._wo_images[(c, seed)] = images
                self.rows.append({"corruption": c, "seed": seed, "setting": "w/o", "diff_to_wo_255": 0.0, **score})
                _print_row(self.rows[-1])

    def evaluate(self, gamma: float, lam: float) -> None:
        """Train and score the w/ DiffLoss restorers of (gamma, lambda) for every corruption and seed."""
        for c in self.corruptions:
            for seed in self.seeds:
                ckpt = self._restorer(c, seed, gamma, lam)
                score, images = self._score(c, ckpt, f"{c}-s{seed}-g{gamma:g}-l{lam:g}")
                wo = self._wo_images[(c, seed)]
                diff = float(np.mean([np.abs(images[k].astype(float) - wo[k].astype(float)).mean() for k in images]))
                self.rows.append({"corruption": c, "seed": seed, "setting": "w/", "gamma": gamma, "lam": lam,
                                  "diff_to_wo_255": diff, **score})
                _print_row(self.rows[-1])


def _print_row(r: dict) -> None:
    g = "" if r.get("gamma") is None else f" gamma={r['gamma']:g} lam={r['lam']:g}"
    print(f"  {r['corruption']} seed {r['seed']} {r['setting']}{g}: PSNR {r['psnr']:.2f}, top-1 vgg/resnet "
          f"{r['top1_vgg_mini']:.1f}/{r['top1_resnet_mini']:.1f}, |w - w/o| {r.get('diff_to_wo_255', 0):.2f}/255 "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)


def markdown(rows: list[dict], settings: list[dict], corruptions: list[str]) -> str:
    """The per-corruption means (over seeds) of every setting, and the rule's table."""
    lines = ["| corruption | setting | PSNR | Top-1 VGG-mini | Top-1 ResNet-mini | mean abs(w - w/o) (/255) | seeds |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        name = r["setting"] if r["setting"] != "w/" else f"w/ gamma={r['gamma']:g} lambda={r['lam']:g}"
        rank = ({"degraded": 0, "w/o": 1}.get(r["setting"], 2), r.get("gamma") or 0.0, r.get("lam") or 0.0)
        groups.setdefault((r["corruption"], rank, name), []).append(r)
    for (c, _, name), rs in sorted(groups.items(), key=lambda kv: (corruptions.index(kv[0][0]), kv[0][1])):
        d = "" if name == "degraded" else f"{np.mean([r['diff_to_wo_255'] for r in rs]):.2f}"
        lines.append(f"| {c} | {name} | {np.mean([r['psnr'] for r in rs]):.2f} | "
                     f"{np.mean([r['top1_vgg_mini'] for r in rs]):.1f} | {np.mean([r['top1_resnet_mini'] for r in rs]):.1f} | "
                     f"{d} | {len(rs) if name != 'degraded' else ''} |")
    lines += ["", "| gamma | lambda | mean Top-1 | mean PSNR | min over corruptions of mean abs(w - w/o) (/255) | eligible |",
              "|---|---|---|---|---|---|"]
    for s in settings:
        lines.append(f"| {s['gamma']:g} | {s['lam']:g} | {s['top1']:.2f} | {s['psnr']:.2f} | {s['min_diff_255']:.2f} | "
                     f"{'yes' if s['eligible'] else 'no'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- publishing
REPO = Path(__file__).resolve().parents[1]
#: The committed copy of the documented run's tables (``--publish``), from which docs/prior.md's block is made.
PUBLISHED_ROWS = REPO / "docs" / "demo" / "diffloss-sweep.csv"
PUBLISHED_CHOICE = REPO / "docs" / "demo" / "diffloss-sweep.json"
DOCS = REPO / "docs" / "prior.md"
DOCS_START, DOCS_END = "<!-- diffloss-sweep:start -->", "<!-- diffloss-sweep:end -->"


def read_rows(path: Path) -> list[dict]:
    """``sweep.csv`` back as rows (numbers as int / float, empty cells None)."""
    return read_csv(path, ints=("seed", "n"), floats=("gamma", "lam", "psnr", "ssim", "top1_vgg_mini",
                                                      "top1_resnet_mini", "diff_to_wo_255"))


def docs_block(rows: list[dict], choice: dict) -> str:
    """docs/prior.md's sweep block: the per-corruption means, the rule's table and the choice, all computed from
    ``rows`` (the published ``sweep.csv``); ``choice``: the run's ``choice.json`` (time, load, settings)."""
    corruptions = list(dict.fromkeys(r["corruption"] for r in rows))
    settings = summarize_settings(rows)
    chosen = choose_setting(settings)
    interior = chosen is not None and not missing_neighbours(chosen, settings, choice["rule"]["step"])
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    r = choice["restorers"]
    head = (f"Generated by `python benchmarks/diffloss_sweep.py --publish` from its run (tables: "
            f"`docs/demo/diffloss-sweep.csv`, `docs/demo/diffloss-sweep.json`); do not edit by hand. "
            f"{choice['validation']}, severity {choice['severity']}; restorer seeds {', '.join(map(str, seeds))}; "
            f"{r['warmup_steps']} L2 warm-up steps (lr {r['lr']:g}) + {r['steps']} steps (lr {r['phase_lr']:g}). "
            f"The run took {choice['seconds'] / 60:.0f} min (load average {choice['loadavg'][0]:.1f} on "
            f"{choice['cpus']} shared CPUs). Means over seeds:")
    if chosen is None:
        verdict = f"**Chosen: none**: no setting changes every corruption's restorations by {MIN_EFFECT_255}/255."
    else:
        verdict = (f"**Chosen: gamma = {chosen['gamma']:g}, lambda = {chosen['lam']:g}** (mean validation Top-1 "
                   f"{chosen['top1']:.2f}, mean PSNR {chosen['psnr']:.2f} dB; interior: {'yes' if interior else 'no'}).")
    return "\n".join([head, "", markdown(rows, settings, corruptions), "", verdict])


def publish(out: Path) -> None:
    """Copy the run's ``sweep.csv`` and ``choice.json`` to `PUBLISHED_ROWS` / `PUBLISHED_CHOICE` and rewrite
    docs/prior.md's block from the copies."""
    from analysis.demo.docs import replace_block

    PUBLISHED_ROWS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(PUBLISHED_ROWS, (out / "sweep.csv").read_text(encoding="utf-8"))
    atomic_write_text(PUBLISHED_CHOICE, (out / "choice.json").read_text(encoding="utf-8"))
    block = docs_block(read_rows(PUBLISHED_ROWS), json.loads(PUBLISHED_CHOICE.read_text(encoding="utf-8")))
    atomic_write_text(DOCS, replace_block(DOCS.read_text(encoding="utf-8"), block, str(DOCS), DOCS_START, DOCS_END))


def run_sweep(out: Path, gammas, lams, corruptions, severity: int, seeds, step: float, extend: bool,
              cub_root: str | None = None, progress: bool = False, max_extensions: int = 6) -> dict:
    """Rules 1-3 of the module doc on the settings of `cross` (``gammas``, ``lams``), extended while
    ``extend``. Writes the tables into ``out``; returns ``{"rows", "settings", "chosen", "interior", ...}``."""
    t0 = time.perf_counter()
    sweep = Sweep(out, corruptions, severity, seeds, cub_root, progress)
    sweep.baselines()
    todo, extensions = cross(gammas, lams), 0
    while True:
        for g, lam in todo:
            sweep.evaluate(g, lam)
        settings = summarize_settings(sweep.rows)
        chosen = choose_setting(settings)
        todo = missing_neighbours(chosen, settings, step) if chosen is not None else []
        if not todo or not extend or extensions >= max_extensions:
            break
        extensions += 1
        print(f"extension {extensions}: gamma={chosen['gamma']:g} lambda={chosen['lam']:g} is not interior yet; "
              f"evaluating {todo}", flush=True)
    write_csv(out / "sweep.csv", sweep.rows, COLUMNS, float_format=".6g")
    write_csv(out / "settings.csv", settings, SETTING_COLUMNS, float_format=".6g")
    result = {"chosen": chosen, "interior": chosen is not None and not todo, "extensions": extensions,
              "rule": {"min_effect_255": MIN_EFFECT_255, "tie_points": TIE_POINTS, "step": step},
              "seeds": list(seeds), "corruptions": list(corruptions), "severity": severity,
              "validation": f"mini-CUB validation draw (seed 1), split {VAL_SPLIT!r}, {sweep.rows[0]['n']} images",
              "restorers": {k: DEMO_SETTINGS[k] for k in ("net", "warmup_steps", "lr", "steps", "phase_lr", "crop",
                                                             "batch_size")},
              "seconds": round(time.perf_counter() - t0, 1), "loadavg": list(os.getloadavg()),
              "cpus": os.cpu_count()}
    atomic_write_text(out / "choice.json", json.dumps(result, indent=2) + "\n")
    return {**result, "rows": sweep.rows, "settings": settings}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gammas", default="0.1,1,10", help="gamma values of the first grid (default %(default)s)")
    p.add_argument("--lams", default="0.1,1,10", help="lambda values of the first grid (default %(default)s)")
    p.add_argument("--step", type=float, default=10.0, help="factor between neighbouring grid values (default 10)")
    p.add_argument("--no-extend", dest="extend", action="store_false", help="do not extend the grid (rule 3)")
    p.add_argument("--seeds", default=",".join(map(str, DEMO_SEEDS)), help="restorer seeds (default %(default)s)")
    p.add_argument("--corruptions", default="fog,rain,lowlight", help="corruptions (default %(default)s)")
    p.add_argument("--severity", type=int, default=3, help="severity (default 3)")
    p.add_argument("--cub-root", default=None, help="CUB root of the training pairs (default: the built-in mini-CUB)")
    p.add_argument("--out", default="runs/diffloss-sweep", help="output folder (default runs/diffloss-sweep)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--publish", action="store_true", help="copy the tables to docs/demo/ and rewrite docs/prior.md's "
                   "block (the documented run); with --publish-only, from --out's finished run without training")
    p.add_argument("--publish-only", action="store_true", help="only publish --out's finished run")
    args = p.parse_args(argv)
    if args.publish_only:
        publish(Path(args.out))
        print(f"published {args.out} into {PUBLISHED_ROWS.parent} and {DOCS}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    corruptions = [c for c in args.corruptions.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    with torch_threads(args.threads):
        res = run_sweep(Path(args.out), _floats(args.gammas), _floats(args.lams), corruptions, args.severity, seeds,
                        args.step, args.extend, args.cub_root)
    print(f"\nvalidation: {res['validation']}, severity {args.severity}; restorers: "
          f"{DEMO_SETTINGS['warmup_steps']} L2 warm-up steps + {DEMO_SETTINGS['steps']} steps, seeds {seeds}; "
          f"{res['seconds']:.0f} s (load average {res['loadavg'][0]:.1f}, {res['cpus']} CPUs)\n")
    print(markdown(res["rows"], res["settings"], corruptions))
    c = res["chosen"]
    if c is None:
        print(f"\nchosen: none (no setting changes every corruption's restorations by {MIN_EFFECT_255}/255)")
    else:
        print(f"\nchosen: gamma={c['gamma']:g} lambda={c['lam']:g} (mean validation Top-1 {c['top1']:.2f}, "
              f"PSNR {c['psnr']:.2f}); interior: {'yes' if res['interior'] else 'no'}")
    print(f"wrote {Path(args.out) / 'sweep.csv'}, settings.csv, choice.json")
    if args.publish:
        publish(Path(args.out))
        print(f"published into {PUBLISHED_ROWS.parent} and {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
