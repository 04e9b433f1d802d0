"""Table 2: top-1 accuracy of fine-tuned classifiers on clean, degraded and restored CUB test images.

Every set is a CUB root (from `corruptions.build`, from `diffloss.restore`, or your own) whose test split
holds the same images as the clean root's; only the test split is scored, with each classifier's own
preprocessing (recorded in its checkpoint). Each cell gets a 95% percentile-bootstrap confidence interval
(resamples drawn from --seed, alias --bootstrap-seed), each pair of configurations on the same images (degraded
vs restored, w/o vs w/ DiffLoss) McNemar's exact test; the McNemar p-values of one table are one family and
get Holm's correction by default (--p-adjust holm; column p_adjusted beside the raw p_value). Writes
OUT/table.{csv,md,tex,json}, OUT/mcnemar.csv and OUT/predictions/ (per-image predictions, from which
--from-predictions re-makes every table without a model). Arguments and a writable --out are checked before
anything is scored.

    python -m analysis.classify --classifier resnet50=ckpt/resnet50.pt --classifier vgg16=ckpt/vgg16.pt \\
        --clean data/CUB_200_2011 --set "degraded/fog=data/cub-degraded/fog/3" \\
        --set "w/o DiffLoss/fog=data/restored/fog-l2" --set "w/ DiffLoss/fog=data/restored/fog-diffloss" --out runs/table2

--set takes CONFIG/DEGRADATION=ROOT (the last '/' before '=' separates them, so 'w/o DiffLoss/fog' works).
The same can be given as a JSON/YAML --spec file. --bbox-crop scores box-cropped images instead (URIE's CUB-C
protocol: crop to the box, resize to 256x256, centre-crop 227; --bbox-size changes the two sizes). Each
classifier must have been trained on the protocol it is scored with (python -m classifiers.finetune --bbox-crop
records it in the checkpoint; older checkpoints mean whole images); a mismatch is an error unless
--allow-protocol-mismatch. Without --classifier, --spec or --from-predictions it runs the embedded demo: a
synthetic smoke benchmark on the built-in mini-CUB that needs no data.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from classifiers import (
    CLASSIFIERS,
    URIE_BBOX_SIZE,
    describe_protocol,
    eval_protocol,
    load_classifier,
    parse_bbox_size,
    protocol_preprocess,
    protocol_transform,
)
from classifiers.predict import make_loader, predict, resolve_device
from cubdata import CubIndex, atomic_write_text, cache_dir, crop_to_bbox, load_pil_rgb, read_cub, sha256_file
from cubdata.distributed import distributed, gather_checked, on_rank0, shard

from .stats import P_ADJUST_METHODS, adjust_p_values, mcnemar_test, top1_with_ci


log = logging.getLogger(__name__)

__all__ = [
    "CLEAN", "TABLE_COLUMNS", "MCNEMAR_COLUMNS", "PREDICTION_COLUMNS", "URIE_BBOX_SIZE", "SetSpec", "Table2Spec", "Predictions", "ScoringDataset", "parse_set_arg",
    "parse_bbox_size", "check_protocol",
    "parse_classifier_arg", "load_spec", "check_same_test_split", "score_table2", "summarize", "format_markdown",
    "format_latex", "write_outputs", "load_table", "load_mcnemar", "load_predictions", "run_table2",
    "build_parser", "main", "check_out_writable", "P_ADJUST_METHODS",
]

CLEAN = "clean"
TABLE_COLUMNS = ("config", "degradation", "classifier", "n", "correct", "top1", "ci_low", "ci_high")
#: p_value: the exact McNemar p-value of the test alone; p_adjusted: corrected over all McNemar tests of the table
#: by the method named in p_adjust ("holm", or "none": p_adjusted == p_value).
MCNEMAR_COLUMNS = ("config_a", "config_b", "degradation", "classifier", "n", "b", "c", "p_value", "p_adjusted",
                   "p_adjust")
_LEGACY_MCNEMAR_COLUMNS = MCNEMAR_COLUMNS[:8]  # files written before p_adjusted existed
DEFAULT_P_ADJUST = "holm"
PREDICTION_COLUMNS = ("config", "degradation", "classifier", "image_id", "rel_path", "label", "pred", "correct")
PREDICTIONS_FORMAT = "diffloss-toolkit/table2-predictions-v1"
DEFAULT_OUT = "runs/table2"
DEMO_OUT = "runs/demo-table2"


# --------------------------------------------------------------------------------------------------
# what to score
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetSpec:
    """One scored set: the test split of the CUB root ``root`` under row ``config`` and column group
    ``degradation``."""

    config: str
    degradation: str
    root: str


@dataclass
class Table2Spec:
    """The clean CUB root, the classifiers (name -> checkpoint, in column order) and the sets (row order =
    first appearance of each config). ``bbox_crop`` scores box-cropped images (URIE's CUB-C protocol):
    each image is cropped to its box, resized to ``bbox_size[0]`` x ``bbox_size[0]`` and centre-cropped to
    ``bbox_size[1]`` (default URIE's 256 / 227); ``bbox_size=None`` uses each classifier's own resize / crop
    size instead. A classifier trained on another protocol than the one requested (its checkpoint's
    ``protocol``: whole images or box crops at some size) is refused (`check_protocol`) unless
    ``allow_protocol_mismatch``, which only logs a warning."""

    clean: str
    classifiers: dict[str, str]
    sets: list[SetSpec] = field(default_factory=list)
    bbox_crop: bool = False
    bbox_size: tuple[int, int] | None = URIE_BBOX_SIZE
    allow_protocol_mismatch: bool = False

    def validate(self) -> None:
        if not self.clean:
            raise ValueError("no clean CUB root given (--clean CUB_ROOT or 'clean:' in the spec file)")
        if not self.classifiers:
            raise ValueError("no classifier given (--classifier NAME=CKPT or 'classifiers:' in the spec file)")
        seen = set()
        for s in self.sets:
            if not s.config or not s.degradation:
                raise ValueError(f"set {s} needs a non-empty config and degradation")
            if s.config == CLEAN or s.degradation == CLEAN:
                raise ValueError(f"'{CLEAN}' is reserved for the clean row (given by --clean); rename set "
                                 f"'{s.config}/{s.degradation}'")
            key = (s.config, s.degradation)
            if key in seen:
                raise ValueError(f"set '{s.config}/{s.degradation}' is given twice")
            seen.add(key)
        if self.bbox_size is not None:
            resize, crop = (int(v) for v in self.bbox_size)
            if not 16 <= crop <= resize:
                raise ValueError(f"bbox_size must be (resize, crop) with 16 <= crop <= resize, got {self.bbox_size}")


def parse_set_arg(text: str) -> SetSpec:
    """``"CONFIG/DEGRADATION=ROOT"`` -> `SetSpec`; the last ``/`` before the first ``=`` separates config
    and degradation (``"w/o DiffLoss/fog=..."`` -> config ``"w/o DiffLoss"``, degradation ``"fog"``)."""
    key, eq, root = text.partition("=")
    config, slash, degradation = key.rpartition("/")
    if not eq or not slash or not config.strip() or not degradation.strip() or not root.strip():
        raise ValueError(f"expected CONFIG/DEGRADATION=ROOT (e.g. 'degraded/fog=cub-degraded/fog/3'), got {text!r}")
    return SetSpec(config.strip(), degradation.strip(), root.strip())


def parse_classifier_arg(text: str) -> tuple[str, str]:
    """``"NAME=CKPT"`` -> ``(name, ckpt)``. If NAME is a registry architecture, the checkpoint must hold it."""
    name, eq, ckpt = text.partition("=")
    if not eq or not name.strip() or not ckpt.strip():
        raise ValueError(f"expected NAME=CKPT (e.g. 'resnet50=ckpt/resnet50.pt'), got {text!r}")
    return name.strip(), ckpt.strip()


def _resolve(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else base / q)


def load_spec(path: str | Path) -> tuple[Table2Spec, dict[str, Any]]:
    """Read a JSON or YAML spec file. Returns the spec and the file's other options (``out``, ...).

    Keys: ``clean`` (root), ``classifiers`` (mapping name -> checkpoint, or list of ``"NAME=CKPT"``),
    ``sets`` (mapping ``"CONFIG/DEGRADATION"`` -> root, nested mapping config -> {degradation: root}, or a
    list of ``{config, degradation, root}``), optional ``bbox_crop``, ``bbox_size`` (``"256,227"``,
    ``[256, 227]`` or ``"classifier"``), ``allow_protocol_mismatch``, ``out``. Relative paths are relative
    to the spec file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        doc = json.loads(text)
    else:
        import yaml

        doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ValueError(f"spec file {path} must hold a mapping with 'clean', 'classifiers', 'sets'; found "
                         f"{type(doc).__name__}")
    known = {"clean", "classifiers", "sets", "bbox_crop", "bbox_size", "allow_protocol_mismatch", "out"}
    unknown = set(doc) - known
    if unknown:
        raise ValueError(f"spec file {path}: unknown keys {sorted(unknown)}; valid keys: {sorted(known)}")
    base = path.parent
    classifiers: dict[str, str] = {}
    raw = doc.get("classifiers") or {}
    items = raw.items() if isinstance(raw, dict) else (parse_classifier_arg(str(t)) for t in raw)
    for name, ckpt in items:
        classifiers[str(name)] = _resolve(base, str(ckpt))
    sets: list[SetSpec] = []
    raw_sets = doc.get("sets") or {}
    if isinstance(raw_sets, dict):
        for key, val in raw_sets.items():
            if isinstance(val, dict):
                for deg, root in val.items():
                    sets.append(SetSpec(str(key), str(deg), _resolve(base, str(root))))
            else:
                s = parse_set_arg(f"{key}={val}")
                sets.append(SetSpec(s.config, s.degradation, _resolve(base, s.root)))
    elif isinstance(raw_sets, list):
        for item in raw_sets:
            if isinstance(item, str):
                s = parse_set_arg(item)
            elif isinstance(item, dict) and {"config", "degradation", "root"} <= set(item):
                s = SetSpec(str(item["config"]), str(item["degradation"]), str(item["root"]))
            else:
                raise ValueError(f"spec file {path}: each set must be 'CONFIG/DEGRADATION=ROOT' or a mapping with "
                                 f"config, degradation, root; found {item!r}")
            sets.append(SetSpec(s.config, s.degradation, _resolve(base, s.root)))
    else:
        raise ValueError(f"spec file {path}: 'sets' must be a mapping or a list, found {type(raw_sets).__name__}")
    clean = _resolve(base, str(doc["clean"])) if doc.get("clean") else ""
    extra = {k: doc[k] for k in ("out",) if k in doc}
    if "out" in extra:
        extra["out"] = _resolve(base, str(extra["out"]))
    bbox_size = parse_bbox_size(doc["bbox_size"]) if "bbox_size" in doc else URIE_BBOX_SIZE
    return Table2Spec(clean, classifiers, sets, bool(doc.get("bbox_crop", False)), bbox_size,
                      bool(doc.get("allow_protocol_mismatch", False))), extra


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Per-image top-1 predictions of one classifier on one set (arrays of shape ``[N]``, test split order)."""

    config: str
    degradation: str
    classifier: str
    image_id: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    rel_path: list[str]

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.label

    @property
    def key(self) -> tuple[str, str, str]:
        return self.config, self.degradation, self.classifier


def _stem(rel_path: str) -> str:
    p = Path(rel_path)
    return (p.parent / p.stem).as_posix()


def check_same_test_split(clean: CubIndex, other: CubIndex, what: str = "set") -> None:
    """Raise ValueError unless ``other``'s test split has exactly the clean test split's image ids, relative
    paths (the extension may differ) and class ids."""
    a = {r.image_id: r for r in clean.split("test")}
    b = {r.image_id: r for r in other.split("test")}
    problems = []
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    if missing:
        problems.append(f"{len(missing)} clean test image(s) missing (ids {missing[:5]}{'...' if len(missing) > 5 else ''})")
    if extra:
        problems.append(f"{len(extra)} image(s) not in the clean test split (ids {extra[:5]}{'...' if len(extra) > 5 else ''})")
    paths = [i for i in sorted(set(a) & set(b)) if _stem(a[i].rel_path) != _stem(b[i].rel_path)]
    if paths:
        i = paths[0]
        problems.append(f"{len(paths)} image(s) with another file name (e.g. id {i}: clean {a[i].rel_path!r}, "
                        f"set {b[i].rel_path!r})")
    labels = [i for i in sorted(set(a) & set(b)) if a[i].class_id != b[i].class_id]
    if labels:
        i = labels[0]
        problems.append(f"{len(labels)} image(s) with another class (e.g. id {i}: clean {a[i].class_id}, set {b[i].class_id})")
    if problems:
        raise ValueError(
            f"{what} {other.root} does not match the clean test split of {clean.root} "
            f"({len(a)} images): {'; '.join(problems)}. A set must be a degraded/restored copy of the clean "
            "root's test split with the same images.txt ids and relative paths (build it with "
            "python -m corruptions.build / diffloss.restore from the same clean root)."
        )


class ScoringDataset(torch.utils.data.Dataset):
    """The images ``paths`` (in the clean test split's order) -> ``(transform(RGB PIL image), label,
    image_id)``; with ``bboxes`` each image is first cropped to its ``(x, y, w, h)`` box."""

    def __init__(self, paths: list[Path], labels: list[int], ids: list[int], transform,
                 bboxes: list[tuple[float, float, float, float]] | None = None) -> None:
        self.paths, self.labels, self.ids, self.transform, self.bboxes = paths, labels, ids, transform, bboxes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_pil_rgb(self.paths[i])
        if self.bboxes is not None:
            img = crop_to_bbox(img, self.bboxes[i])
        return self.transform(img), self.labels[i], self.ids[i]


def _check_classes(name: str, info: dict, clean: CubIndex) -> None:
    names = [clean.classes[k] for k in sorted(clean.classes)]
    if info["num_classes"] != len(names):
        raise ValueError(f"classifier {name!r} ({info['path']}) predicts {info['num_classes']} classes but the clean "
                         f"root {clean.root} has {len(names)}; fine-tune it on this dataset")
    if list(info["class_names"]) != names:
        bad = next(i for i, (x, y) in enumerate(zip(info["class_names"], names)) if x != y)
        raise ValueError(f"classifier {name!r} ({info['path']}) was trained with other class names than "
                         f"{clean.root}/classes.txt (label {bad}: {info['class_names'][bad]!r} vs {names[bad]!r})")


def check_protocol(name: str, info: dict, spec: Table2Spec) -> str | None:
    """``None`` when the classifier ``name`` (``info`` from `classifiers.load_classifier`) was trained and
    measured on the protocol ``spec`` asks for (same ``bbox_crop``; with box crops, the same resize / crop
    sizes after resolving "the classifier's own"); else the one-line reason, naming the checkpoint, both
    protocols and the flag to change."""
    pp, trained = info["preprocess"], info["protocol"]
    requested = eval_protocol(spec.bbox_crop, spec.bbox_size)

    def sizes(protocol):
        q = protocol_preprocess(pp, protocol)
        return int(q["resize"]), int(q["img_size"])

    if trained["bbox_crop"] == requested["bbox_crop"] and (not trained["bbox_crop"] or sizes(trained) == sizes(requested)):
        return None
    if trained["bbox_crop"]:
        r, c = sizes(trained)
        fix = (f"pass --bbox-crop --bbox-size {r},{c}" if not requested["bbox_crop"] else f"pass --bbox-size {r},{c}")
        fix += f" (spec file: bbox_crop: true, bbox_size: [{r}, {c}])"
    else:
        fix = "drop --bbox-crop (and bbox_crop from the spec file)"
    return (f"classifier {name!r} ({info['path']}) was trained on {describe_protocol(trained, pp)} but "
            f"{describe_protocol(requested, pp)} was requested; {fix} to score it as trained, or pass "
            "--allow-protocol-mismatch to evaluate across protocols on purpose")


def score_table2(spec: Table2Spec, device: str | torch.device = "auto", batch_size: int = 64, workers: int = 2,
                 progress: bool = True) -> tuple[list[Predictions], dict[str, Any]]:
    """Score every classifier of ``spec`` on the clean test split and on every set's test split.

    Returns ``(predictions, meta)``: predictions in row order (clean first), one per (set, classifier);
    ``meta`` records the roots, the checkpoints with their arch/preprocessing/training protocol and
    ``bbox_crop``. Sets (`check_same_test_split`) and each classifier's training protocol against the requested
    one (`check_protocol`: ValueError, or a warning with ``spec.allow_protocol_mismatch``) are checked before
    any model runs.

    Under ``torchrun --nproc_per_node N`` (`cubdata.distributed`; each rank on its LOCAL_RANK GPU) the
    batches of every set are shared out between the ranks, whole batches, so every image is scored in the
    same batch as on one process; the predictions are gathered and put back in test-split order, and every
    rank returns the same result as a one-process run.
    """
    spec.validate()
    with distributed(str(resolve_device(device))) as (rank, world, dev):
        return _score_table2(spec, dev, batch_size, workers, progress, rank, world)


def _shard_positions(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Positions (in test-split order) of the images rank ``rank`` scores: every ``world``-th batch of
    ``batch_size``. Only the last batch of all can be short, so the shard cut into ``batch_size`` chunks
    gives back exactly those batches."""
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return [i for b in shard(batches, rank, world) for i in b]


def _score_table2(spec: Table2Spec, device: torch.device, batch_size: int, workers: int, progress: bool,
                  rank: int, world: int) -> tuple[list[Predictions], dict[str, Any]]:
    clean = read_cub(spec.clean)
    records = clean.split("test")
    if not records:
        raise ValueError(f"the clean root {clean.root} has no test images")
    roots: list[tuple[str, str, CubIndex]] = [(CLEAN, CLEAN, clean)]
    for s in spec.sets:
        try:
            idx = read_cub(s.root)
        except ValueError as err:
            raise ValueError(f"set '{s.config}/{s.degradation}': {err}") from err
        check_same_test_split(clean, idx, what=f"set '{s.config}/{s.degradation}'")
        roots.append((s.config, s.degradation, idx))
    bboxes = None
    if spec.bbox_crop:
        if any(r.bbox is None for r in records):
            raise ValueError(f"--bbox-crop needs {clean.root}/bounding_boxes.txt with a box for every test image")
        bboxes = [r.bbox for r in records]

    models, infos, mismatched = {}, {}, []
    for name, ckpt in spec.classifiers.items():
        model, info = load_classifier(ckpt, device, expect_arch=name if name in CLASSIFIERS else None)
        _check_classes(name, info, clean)
        problem = check_protocol(name, info, spec)
        if problem is not None:
            if not spec.allow_protocol_mismatch:
                raise ValueError(problem)
            if rank == 0:
                log.warning("%s (allowed by --allow-protocol-mismatch)", problem.split("; ")[0])
            mismatched.append(name)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        models[name], infos[name] = model, info
    # classifiers with identical preprocessing share one pass over the images
    groups: dict[str, list[str]] = {}
    for name, info in infos.items():
        groups.setdefault(json.dumps(info["preprocess"], sort_keys=True), []).append(name)

    labels = [r.label for r in records]
    ids = [r.image_id for r in records]
    rel = [r.rel_path for r in records]
    mine = _shard_positions(len(ids), batch_size, rank, world)

    def score_mine() -> list[dict[str, dict[str, np.ndarray]]]:
        """This rank's predictions: per root, {classifier: {"pred", "label", "image_id"}} on ``mine``."""
        found_per_root = []
        for config, degradation, idx in roots:
            paths = [idx.image_path(idx.record(ids[i])) for i in mine]
            found: dict[str, dict[str, np.ndarray]] = {}
            for key, names in groups.items():
                transform = protocol_transform(json.loads(key), eval_protocol(spec.bbox_crop, spec.bbox_size))
                ds = ScoringDataset(paths, [labels[i] for i in mine], [ids[i] for i in mine], transform,
                                    None if bboxes is None else [bboxes[i] for i in mine])
                loader = make_loader(ds, batch_size, min(workers, len(ds)), device)
                desc = "clean" if config == CLEAN else f"{config}/{degradation}"
                found.update(predict({n: models[n] for n in names}, loader, device, desc=desc,
                                     progress=progress and rank == 0))
            found_per_root.append(found)
        return found_per_root

    parts = gather_checked(score_mine, rank, world)
    where = [np.asarray(_shard_positions(len(ids), batch_size, r, world), np.int64) for r in range(world)]
    out: list[Predictions] = []
    for k, (config, degradation, _) in enumerate(roots):
        for name in spec.classifiers:
            r = {}
            for field_ in ("pred", "label", "image_id"):  # each rank's shard back into test-split order
                merged = np.zeros(len(ids), np.int64)
                for pos, part in zip(where, parts):
                    merged[pos] = part[k][name][field_]
                r[field_] = merged
            if not np.array_equal(r["image_id"], np.asarray(ids)):
                raise RuntimeError("internal error: predictions are not in test-split order")
            out.append(Predictions(config, degradation, name, r["image_id"], r["label"], r["pred"], list(rel)))
            if rank == 0:
                log.info("%s / %s / %s: top-1 %.2f%% on %d images", config, degradation, name,
                         100.0 * float(np.mean(r["pred"] == r["label"])), len(ids))
    meta = {
        "clean_root": str(clean.root),
        "bbox_crop": bool(spec.bbox_crop),
        "bbox_size": (list(spec.bbox_size) if spec.bbox_crop and spec.bbox_size is not None else None),
        "allow_protocol_mismatch": bool(spec.allow_protocol_mismatch),
        "protocol_mismatch": mismatched,
        "classifiers": {n: {"ckpt": str(spec.classifiers[n]), "arch": infos[n]["arch"],
                            "preprocess": infos[n]["preprocess"], "protocol": infos[n]["protocol"],
                            "clean_test_top1_at_training": infos[n]["clean_test_top1"]} for n in spec.classifiers},
        "sets": [{"config": s.config, "degradation": s.degradation, "root": str(s.root)} for s in spec.sets],
    }
    return out, meta


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _order(preds: Sequence[Predictions]) -> dict[str, list[str]]:
    configs, degs, clfs = [CLEAN], [], []
    for p in preds:
        if p.config not in configs:
            configs.append(p.config)
        if p.degradation != CLEAN and p.degradation not in degs:
            degs.append(p.degradation)
        if p.classifier not in clfs:
            clfs.append(p.classifier)
    if not any(p.config == CLEAN for p in preds):
        configs.remove(CLEAN)
    return {"configs": configs, "degradations": degs, "classifiers": clfs}


def summarize(preds: Sequence[Predictions], n_boot: int = 1000, confidence: float = 0.95,
              seed: int = 0, p_adjust: str = DEFAULT_P_ADJUST) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tidy table rows (`TABLE_COLUMNS`, top1/ci in percent) and McNemar rows (`MCNEMAR_COLUMNS`) for
    every pair of non-clean configurations scored on the same images, per degradation and classifier
    (rows in table order; pairs A before B in row order).

    Every cell's bootstrap draws from ``seed``. All McNemar tests of the table form one family:
    ``p_adjusted`` is their p-value corrected by ``p_adjust`` (`analysis.stats.P_ADJUST_METHODS`; "holm":
    Holm's step-down correction, family-wise error rate; "none": the raw p-value)."""
    if p_adjust not in P_ADJUST_METHODS:
        raise ValueError(f"unknown p-value adjustment {p_adjust!r}; valid: {', '.join(P_ADJUST_METHODS)}")
    by_key = {p.key: p for p in preds}
    if len(by_key) != len(preds):
        raise ValueError("duplicate (config, degradation, classifier) among the predictions")
    rows = []
    for p in preds:
        stats = top1_with_ci(p.correct, n_boot=n_boot, confidence=confidence, seed=seed)
        rows.append({"config": p.config, "degradation": p.degradation, "classifier": p.classifier, **stats})
    order = _order(preds)
    tests = []
    configs = [c for c in order["configs"] if c != CLEAN]
    for deg in order["degradations"]:
        for clf in order["classifiers"]:
            for i, ca in enumerate(configs):
                for cb in configs[i + 1:]:
                    a, b = by_key.get((ca, deg, clf)), by_key.get((cb, deg, clf))
                    if a is None or b is None:
                        continue
                    if not np.array_equal(a.image_id, b.image_id):
                        raise ValueError(f"{ca}/{deg} and {cb}/{deg} ({clf}) were scored on different images; "
                                         "McNemar's test needs the same images in the same order")
                    tests.append({"config_a": ca, "config_b": cb, "degradation": deg, "classifier": clf,
                                  **mcnemar_test(a.correct, b.correct)})
    for t, adj in zip(tests, adjust_p_values([t["p_value"] for t in tests], p_adjust)):
        t.update(p_adjusted=adj, p_adjust=p_adjust)
    return rows, tests


def _fmt_cell(row: dict | None, digits: int = 1) -> str:
    if row is None:
        return "–"
    return f"{row['top1']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def _grid(rows: Sequence[dict]) -> tuple[dict[str, list[str]], dict[tuple[str, str, str], dict]]:
    order = {"configs": [], "degradations": [], "classifiers": []}
    for r in rows:
        if r["config"] not in order["configs"]:
            order["configs"].append(r["config"])
        if r["degradation"] != CLEAN and r["degradation"] not in order["degradations"]:
            order["degradations"].append(r["degradation"])
        if r["classifier"] not in order["classifiers"]:
            order["classifiers"].append(r["classifier"])
    if CLEAN in order["configs"]:
        order["configs"].remove(CLEAN)
        order["configs"].insert(0, CLEAN)
    cells = {(r["config"], r["degradation"], r["classifier"]): r for r in rows}
    return order, cells


def _cell_for(cells, config, deg, clf):
    if config == CLEAN:  # the clean row is the same clean test images under every degradation column
        return cells.get((CLEAN, CLEAN, clf))
    return cells.get((config, deg, clf))


def format_markdown(rows: Sequence[dict], tests: Sequence[dict] = (), meta: dict | None = None) -> str:
    """Table 2 as Markdown: rows = configurations (clean first), columns = degradation x classifier, cells
    ``top-1 [CI low, CI high]`` in percent; then the McNemar tests."""
    order, cells = _grid(rows)
    meta = meta or {}
    degs = order["degradations"] or [CLEAN]
    header = ["config"] + [f"{d} · {c}" for d in degs for c in order["classifiers"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for config in order["configs"]:
        vals = [_fmt_cell(_cell_for(cells, config, d, c)) for d in degs for c in order["classifiers"]]
        lines.append("| " + " | ".join([config] + vals) + " |")
    ns = sorted({r["n"] for r in rows})
    conf = meta.get("confidence", 0.95)
    notes = [f"Top-1 accuracy (%) on the test split, {conf:.0%} percentile-bootstrap CI in brackets "
             f"({meta.get('n_boot', 1000)} resamples, seed {meta.get('seed', 0)}); "
             f"n = {', '.join(map(str, ns))} images per cell."
             + (" The clean row repeats each classifier's clean accuracy under every degradation." if order["degradations"] else "")]
    if meta.get("bbox_crop"):
        size = meta.get("bbox_size")
        notes.append("Images cropped to their bounding boxes, " + (
            f"resized to {size[0]}x{size[0]} and centre-cropped to {size[1]} (URIE's CUB-C protocol)."
            if size else "then resized and centre-cropped with each classifier's own sizes."))
    text = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    if tests:
        text += _mcnemar_markdown(tests)
    return text


def _mcnemar_markdown(tests: Sequence[dict]) -> str:
    method = tests[0].get("p_adjust", "none")
    holm = method == "holm"
    t = ["", "McNemar's exact test (same images; b = A right & B wrong, c = A wrong & B right):", "",
         "| degradation | classifier | A | B | n | b | c | p |" + (" p (Holm) |" if holm else ""),
         "|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if holm else "")]
    for r in tests:
        t.append(f"| {r['degradation']} | {r['classifier']} | {r['config_a']} | {r['config_b']} | {r['n']} | "
                 f"{r['b']} | {r['c']} | {_fmt_p(r['p_value'])} |"
                 + (f" {_fmt_p(r['p_adjusted'])} |" if holm else ""))
    if holm:
        t += ["", f"p: exact two-sided p-value of each test alone (uncorrected). p (Holm): Holm-corrected over all "
                  f"{len(tests)} McNemar tests of this table (family-wise error rate); read this column when asking "
                  "whether a difference holds up among all the comparisons made here."]
    else:
        t += ["", f"p: exact two-sided p-values, not corrected for multiple comparisons ({len(tests)} tests; "
                  "--p-adjust none)."]
    return "\n".join(t) + "\n"


def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))


def format_latex(rows: Sequence[dict], meta: dict | None = None) -> str:
    """Table 2 as a LaTeX ``table`` (booktabs): a header row of degradations spanning their classifiers."""
    order, cells = _grid(rows)
    meta = meta or {}
    degs = order["degradations"] or [CLEAN]
    clfs = order["classifiers"]
    k = len(clfs)
    colspec = "l" + ("|" + "c" * k) * len(degs)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{_tex(d)}}}" for d in degs) + r" \\")
    lines.append(" ".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(degs))))
    lines.append("Config & " + " & ".join(_tex(c) for _ in degs for c in clfs) + r" \\")
    lines.append(r"\midrule")
    for config in order["configs"]:
        vals = []
        for d in degs:
            for c in clfs:
                r = _cell_for(cells, config, d, c)
                vals.append("--" if r is None else
                            rf"{r['top1']:.1f} {{\scriptsize[{r['ci_low']:.1f}, {r['ci_high']:.1f}]}}")
        lines.append(_tex(config) + " & " + " & ".join(vals) + r" \\")
        if config == CLEAN:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    ns = sorted({r["n"] for r in rows})
    lines.append(rf"\caption{{Top-1 accuracy (\%) on the test split; {meta.get('confidence', 0.95) * 100:.0f}\% "
                 rf"bootstrap confidence intervals in brackets ({meta.get('n_boot', 1000)} resamples); "
                 rf"$n = {', '.join(map(str, ns))}$ images per cell.}}")
    lines += [r"\label{tab:table2}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _csv_text(rows: Iterable[dict], columns: Sequence[str], floats: dict[str, str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([format(r[c], floats[c]) if c in floats else r[c] for c in columns])
    return buf.getvalue()


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def _predictions_csv(p: Predictions) -> str:
    rows = ({"config": p.config, "degradation": p.degradation, "classifier": p.classifier,
             "image_id": int(i), "rel_path": rp, "label": int(y), "pred": int(q), "correct": int(y == q)}
            for i, rp, y, q in zip(p.image_id, p.rel_path, p.label, p.pred))
    return _csv_text(rows, PREDICTION_COLUMNS, {})


def write_outputs(out: str | Path, rows: Sequence[dict], tests: Sequence[dict], preds: Sequence[Predictions] | None,
                  meta: dict[str, Any]) -> dict[str, str]:
    """Write table.csv/md/tex/json, mcnemar.csv and (if ``preds``) predictions/*.csv + manifest.json
    into ``out`` (atomically, file by file). Returns the Markdown text."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if preds is not None:
        files = []
        for i, p in enumerate(preds):
            name = f"{i:03d}_{_slug(p.config)}__{_slug(p.degradation)}__{_slug(p.classifier)}.csv"
            atomic_write_text(out / "predictions" / name, _predictions_csv(p))
            files.append({"file": name, "config": p.config, "degradation": p.degradation,
                          "classifier": p.classifier, "n": int(len(p.image_id))})
        manifest = {"format": PREDICTIONS_FORMAT, "files": files,
                    "meta": {k: v for k, v in meta.items() if k not in ("n_boot", "confidence", "seed", "p_adjust")}}
        atomic_write_text(out / "predictions" / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    md = format_markdown(rows, tests, meta)
    atomic_write_text(out / "table.csv", _csv_text(rows, TABLE_COLUMNS, {"top1": ".4f", "ci_low": ".4f", "ci_high": ".4f"}))
    atomic_write_text(out / "mcnemar.csv", _csv_text(tests, MCNEMAR_COLUMNS, {"p_value": ".6g", "p_adjusted": ".6g"}))
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.tex", format_latex(rows, meta))
    atomic_write_text(out / "table.json", json.dumps({"meta": meta, "columns": list(TABLE_COLUMNS), "rows": list(rows),
                                                      "mcnemar": list(tests)}, indent=2) + "\n")
    return {"markdown": md}


def _read_csv(path: Path, columns: Sequence[str], ints: Sequence[str], floats: Sequence[str],
              legacy: Sequence[str] | None = None) -> list[dict]:
    """Rows of ``path``, whose header must be ``columns`` (or, for older files, ``legacy``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write it with python -m analysis.classify --out {path.parent}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        found = list(reader.fieldnames or [])
        if found != list(columns) and (legacy is None or found != list(legacy)):
            raise ValueError(f"{path}: expected columns {list(columns)}, found {reader.fieldnames}")
        rows = []
        for r in reader:
            for c in ints:
                if c in r:
                    r[c] = int(r[c])
            for c in floats:
                if c in r:
                    r[c] = float(r[c])
            rows.append(r)
    return rows


def load_table(out_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``out_dir/table.csv`` back: one dict per cell with ``config``, ``degradation``, ``classifier``
    (str), ``n``, ``correct`` (int), ``top1``, ``ci_low``, ``ci_high`` (float, percent)."""
    return _read_csv(Path(out_dir) / "table.csv", TABLE_COLUMNS, ("n", "correct"), ("top1", "ci_low", "ci_high"))


def load_mcnemar(out_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``out_dir/mcnemar.csv`` back (``n``, ``b``, ``c`` int; ``p_value``, ``p_adjusted`` float;
    ``p_adjust`` the correction's name). Files from before the correction lack the last two columns."""
    return _read_csv(Path(out_dir) / "mcnemar.csv", MCNEMAR_COLUMNS, ("n", "b", "c"), ("p_value", "p_adjusted"),
                     legacy=_LEGACY_MCNEMAR_COLUMNS)


def load_predictions(directory: str | Path) -> tuple[list[Predictions], dict[str, Any]]:
    """Per-image predictions written by a previous run: ``directory`` is its OUT folder (with
    ``predictions/``) or the ``predictions/`` folder itself. Returns ``(predictions, meta)``."""
    d = Path(directory)
    if (d / "predictions").is_dir():
        d = d / "predictions"
    if not d.is_dir():
        raise FileNotFoundError(f"no predictions folder at {directory} (expected OUT/predictions/ of an earlier run)")
    manifest_path = d / "manifest.json"
    meta: dict[str, Any] = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != PREDICTIONS_FORMAT:
            raise ValueError(f"{manifest_path}: unknown format {manifest.get('format')!r}")
        files = [d / f["file"] for f in manifest["files"]]
        meta = manifest.get("meta", {})
    else:
        files = sorted(d.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no prediction CSV files in {d}")
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for f in files:
        for r in _read_csv(f, PREDICTION_COLUMNS, ("image_id", "label", "pred", "correct"), ()):
            groups.setdefault((r["config"], r["degradation"], r["classifier"]), []).append(r)
    preds = []
    for (config, deg, clf), rs in groups.items():
        preds.append(Predictions(config, deg, clf, np.array([r["image_id"] for r in rs], np.int64),
                                 np.array([r["label"] for r in rs], np.int64),
                                 np.array([r["pred"] for r in rs], np.int64), [r["rel_path"] for r in rs]))
    if not manifest_path.is_file():  # no recorded order: clean first, then file order
        preds.sort(key=lambda p: p.config != CLEAN)
    return preds, meta


def run_table2(spec: Table2Spec, out: str | Path, device: str = "auto", batch_size: int = 64, workers: int = 2,
               n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, progress: bool = True,
               extra_meta: dict | None = None, p_adjust: str = DEFAULT_P_ADJUST) -> dict[str, Any]:
    """Score, summarise and write everything for ``spec`` into ``out``. ``seed``: the bootstrap's;
    ``p_adjust``: the McNemar p-values' correction (`summarize`). Returns ``{"rows", "mcnemar", "markdown",
    "out", "meta"}``.

    Under ``torchrun --nproc_per_node N`` the ranks share the scoring (`score_table2`); rank 0 alone
    summarises and writes, the same files as a one-process run, and every rank returns its result."""
    with distributed(str(resolve_device(device))) as (rank, world, _):
        preds, meta = score_table2(spec, device=device, batch_size=batch_size, workers=workers, progress=progress)
        meta.update(extra_meta or {})
        return on_rank0(lambda: _finish(preds, meta, out, n_boot, confidence, seed, write_predictions=True,
                                        p_adjust=p_adjust), rank, world)


def _finish(preds, meta, out, n_boot, confidence, seed, write_predictions, p_adjust=DEFAULT_P_ADJUST):
    rows, tests = summarize(preds, n_boot=n_boot, confidence=confidence, seed=seed, p_adjust=p_adjust)
    meta = dict(meta, n_boot=int(n_boot), confidence=float(confidence), seed=int(seed), p_adjust=p_adjust)
    md = write_outputs(out, rows, tests, preds if write_predictions else None, meta)["markdown"]
    return {"rows": rows, "mcnemar": tests, "markdown": md, "out": str(out), "meta": meta}


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from cubdata.cli import HelpFormatter, default_workers

    p = argparse.ArgumentParser(prog="python -m analysis.classify", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--classifier", action="append", default=[], metavar="NAME=CKPT",
                   help="a fine-tuned checkpoint and its column name (repeat); if NAME is an architecture "
                        f"({', '.join(CLASSIFIERS)}) the checkpoint must hold that architecture")
    p.add_argument("--clean", default=None, help="the clean CUB root (its test split is the reference)")
    p.add_argument("--set", action="append", default=[], metavar="CONFIG/DEGRADATION=ROOT",
                   help="a CUB root to score as row CONFIG, column DEGRADATION (repeat)")
    p.add_argument("--spec", default=None, help="JSON/YAML file with clean, classifiers, sets (CLI flags add to it)")
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT}; demo: {DEMO_OUT}; "
                                               "--from-predictions: that folder)")
    p.add_argument("--bbox-crop", action="store_true",
                   help="score images cropped to their bounding boxes (URIE's CUB-C protocol)")
    p.add_argument("--bbox-size", default=None, metavar="RESIZE,CROP",
                   help="with --bbox-crop: resize the box to RESIZE x RESIZE and centre-crop CROP; 'classifier' "
                        "uses each checkpoint's own sizes (default: URIE's 256,227, or the spec file's bbox_size)")
    p.add_argument("--allow-protocol-mismatch", action="store_true",
                   help="score classifiers even if they were trained on another protocol (whole images vs "
                        "--bbox-crop, or other box sizes) than the one asked for: a logged warning, not an error")
    p.add_argument("--from-predictions", default=None, metavar="DIR",
                   help="re-make every table from DIR/predictions without running any model")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, 0: torch's choice (default: 1 for the demo, whose nets are tiny; "
                        "else torch's choice)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="DataLoader worker processes (0: main process; the demo always uses 0)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per cell (>= 1)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="confidence level of the intervals, in (0, 1): 0.95, not 95")
    p.add_argument("--seed", "--bootstrap-seed", dest="seed", type=int, default=0,
                   help="seed of the bootstrap resampling (numpy default_rng; every cell's CI draws from it, in every "
                        "mode, the demo included); the only randomness of the table")
    p.add_argument("--p-adjust", default=DEFAULT_P_ADJUST, choices=P_ADJUST_METHODS,
                   help="multiple-comparison correction over all McNemar tests of the table (mcnemar.csv: "
                        "p_adjusted beside the raw p_value); none: raw p-values only (the demo always uses holm)")
    p.add_argument("--no-restore", action="store_true", help="demo only: skip the restoration rows")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p


def check_out_writable(out: str | Path) -> None:
    """Refuse an output folder that cannot be written, before any work: creates ``out`` (with its missing
    parents) and a temporary file in it, then removes the file and the folders it created. Raises
    ``ValueError`` with a one-line message."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose another --out")
    created, p = [], out.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)  # deepest first
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable folder ({err.strerror or err}); choose another --out") from None
    finally:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break


def _check_args(args: argparse.Namespace) -> None:
    """The numeric arguments, before anything is loaded (one-line ValueError)."""
    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be >= 1 (bootstrap resamples per cell), got {args.n_boot}")
    if not 0 < args.confidence < 1:
        hint = (f"; for {args.confidence:g}% pass --confidence {args.confidence / 100:g}"
                if 1 < args.confidence < 100 else "")
        raise ValueError(f"--confidence must be in (0, 1), got {args.confidence:g}{hint}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    try:
        _check_args(args)
        if args.from_predictions:
            out = Path(args.out or args.from_predictions)
            check_out_writable(out)
            preds, meta = load_predictions(args.from_predictions)
            same = out.resolve() == (Path(args.from_predictions).resolve())
            result = _finish(preds, meta, out, args.n_boot, args.confidence, args.seed, write_predictions=not same,
                             p_adjust=args.p_adjust)
            print(result["markdown"])
            print(f"tables re-made from {args.from_predictions} -> {out}")
            return 0
        if not args.classifier and not args.spec:
            if args.set or args.clean:
                raise ValueError("--set/--clean need at least one --classifier NAME=CKPT (or a --spec file)")
            if args.p_adjust != DEFAULT_P_ADJUST:
                raise ValueError(f"--p-adjust applies to your own tables; the demo always uses {DEFAULT_P_ADJUST}")
            check_out_writable(args.out or DEMO_OUT)
            from .demo.table2 import main_demo

            return main_demo(args, progress)
        spec, extra = (load_spec(args.spec) if args.spec else (Table2Spec("", {}), {}))
        if args.clean:
            spec.clean = args.clean
        for text in args.classifier:
            name, ckpt = parse_classifier_arg(text)
            spec.classifiers[name] = ckpt
        spec.sets.extend(parse_set_arg(t) for t in args.set)
        spec.bbox_crop = spec.bbox_crop or args.bbox_crop
        if args.bbox_size is not None:
            spec.bbox_size = parse_bbox_size(args.bbox_size)
        spec.allow_protocol_mismatch = spec.allow_protocol_mismatch or args.allow_protocol_mismatch
        out = Path(args.out or extra.get("out") or DEFAULT_OUT)
        if args.threads:
            torch.set_num_threads(args.threads)
        # under torchrun: one process group for the whole command; rank 0 alone checks --out (its
        # check folder and file would race with the other ranks'), every rank scores its shard
        with distributed(str(resolve_device(args.device))) as (rank, world, _):
            on_rank0(lambda: check_out_writable(out), rank, world)
            result = run_table2(spec, out, device=args.device, batch_size=args.batch_size, workers=args.workers,
                                n_boot=args.n_boot, confidence=args.confidence, seed=args.seed, progress=progress,
                                p_adjust=args.p_adjust)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank != 0:  # rank 0 reports for all
        return 0
    print(result["markdown"])
    print(f"written: {out}/table.csv, table.md, table.tex, table.json, mcnemar.csv, predictions/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
