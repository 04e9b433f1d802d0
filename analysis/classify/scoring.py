"""Scoring: every classifier of a `Table2Spec` on the clean test split and on every set's, as per-image
`Predictions`. Under ``torchrun`` the ranks share the batches and every rank gets the whole result."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classifiers import CLASSIFIERS, eval_protocol, load_classifier, protocol_transform
from classifiers.predict import make_loader, predict, resolve_device
from classifiers.scoring_data import ScoringDataset
from cubdata import CubIndex, read_cub
from runkit.distributed import distributed, gather_checked, shard

from analysis.quality.files import check_decodable
from analysis.classify.spec import CLEAN, Table2Spec, check_classes, check_protocol, check_same_test_split

log = logging.getLogger(__name__)

__all__ = ["Predictions", "score_table2", "shard_positions"]


@dataclass
class Predictions:
    """Per-image top-1 predictions of one classifier on one root of a set (arrays of shape ``[N]``, test split
    order). ``replicate``: the root's place among the set's replicates (0 for a set of one root)."""

    config: str
    degradation: str
    classifier: str
    image_id: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    rel_path: list[str]
    replicate: int = 0

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.label

    @property
    def key(self) -> tuple[str, str, str]:
        """The table cell: ``(config, degradation, classifier)``; a cell's replicates share it."""
        return self.config, self.degradation, self.classifier

    @property
    def run_key(self) -> tuple[str, str, str, int]:
        """One scored root: the cell and the replicate."""
        return (*self.key, self.replicate)


def score_table2(spec: Table2Spec, device: str | torch.device = "auto", batch_size: int = 64, workers: int = 2,
                 progress: bool = True) -> tuple[list[Predictions], dict[str, Any]]:
    """Score every classifier of ``spec`` on the clean test split and on every set's test split.

    Returns ``(predictions, meta)``: predictions in row order (clean first), one per (set, root, classifier):
    a set of several roots (replicates, one per restorer seed) gives one `Predictions` per root, numbered by
    ``replicate``;
    ``meta`` records the roots, the checkpoints with their arch/preprocessing/training protocol and
    ``bbox_crop``. Sets (`check_same_test_split`), every test image's header (an unreadable file:
    `cubdata.ImageDecodeError` naming it) and each classifier's training protocol against the requested one
    (`check_protocol`: ValueError, or a warning with ``spec.allow_protocol_mismatch``) are checked before any
    model runs.

    Under ``torchrun --nproc_per_node N`` (`runkit.distributed`; each rank on its LOCAL_RANK GPU) the
    batches of every set are shared out between the ranks, whole batches, so every image is scored in the
    same batch as on one process; the predictions are gathered and put back in test-split order, and every
    rank returns the same result as a one-process run.
    """
    spec.validate()
    with distributed(str(resolve_device(device))) as (rank, world, dev):
        clean, roots = _open_roots(spec)
        models, infos, mismatched = _load_models(spec, clean, dev, rank == 0)
        records = clean.split("test")
        mine = [records[i] for i in shard_positions(len(records), batch_size, rank, world)]
        parts = gather_checked(lambda: _score_shard(spec, roots, models, infos, mine, dev, batch_size, workers,
                                                    progress and rank == 0), rank, world)
        where = [np.asarray(shard_positions(len(records), batch_size, r, world), np.int64) for r in range(world)]
        preds = _merge(parts, where, roots, list(spec.classifiers), records, log_cells=rank == 0)
    return preds, _meta(spec, clean, infos, mismatched)


def shard_positions(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Positions (in test-split order) of the images rank ``rank`` scores: every ``world``-th batch of
    ``batch_size``. Only the last batch of all can be short, so the shard cut into ``batch_size`` chunks
    gives back exactly those batches."""
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return [i for b in shard(batches, rank, world) for i in b]


def _open_roots(spec: Table2Spec) -> tuple[CubIndex, list[tuple[str, str, int, CubIndex]]]:
    """The clean index and ``(config, degradation, replicate, index)`` of every root, clean first; each set's
    roots checked against the clean test split, every test image's header read (`check_decodable`), and the
    boxes checked against ``--bbox-crop``."""
    clean = read_cub(spec.clean)
    records = clean.split("test")
    if not records:
        raise ValueError(f"the clean root {clean.root} has no test images")
    roots: list[tuple[str, str, int, CubIndex]] = [(CLEAN, CLEAN, 0, clean)]
    for s in spec.sets:
        for k, root in enumerate(s.roots):
            what = f"set '{s.config}/{s.degradation}'" + (f" (root {k + 1} of {len(s.roots)})" if len(s.roots) > 1 else "")
            try:
                idx = read_cub(root)
            except ValueError as err:
                raise ValueError(f"{what}: {err}") from err
            check_same_test_split(clean, idx, what=what)
            roots.append((s.config, s.degradation, k, idx))
    if spec.bbox_crop and any(r.bbox is None for r in records):
        raise ValueError(f"--bbox-crop needs {clean.root}/bounding_boxes.txt with a box for every test image")
    check_decodable(idx.image_path(idx.record(r.image_id)) for *_, idx in roots for r in records)
    return clean, roots


def _load_models(spec: Table2Spec, clean: CubIndex, device: torch.device, report: bool):
    """``(models, infos, mismatched)``: every classifier loaded and checked (classes, protocol); ``mismatched``
    names those scored across protocols by ``allow_protocol_mismatch`` (``report``: log them)."""
    models, infos, mismatched = {}, {}, []
    for name, ckpt in spec.classifiers.items():
        model, info = load_classifier(ckpt, device, expect_arch=name if name in CLASSIFIERS else None)
        check_classes(name, info, clean)
        problem = check_protocol(name, info, spec)
        if problem is not None:
            if not spec.allow_protocol_mismatch:
                raise ValueError(problem)
            if report:
                log.warning("%s (allowed by --allow-protocol-mismatch)", problem.split("; ")[0])
            mismatched.append(name)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        models[name], infos[name] = model, info
    return models, infos, mismatched


def _score_shard(spec: Table2Spec, roots, models, infos, mine: list, device: torch.device, batch_size: int,
                 workers: int, progress: bool) -> list[dict[str, dict[str, np.ndarray]]]:
    """This rank's predictions: per root, ``{classifier: {"pred", "label", "image_id"}}`` on the clean test
    records ``mine``. Classifiers with identical preprocessing share one pass over the images."""
    groups: dict[str, list[str]] = {}
    for name, info in infos.items():
        groups.setdefault(json.dumps(info["preprocess"], sort_keys=True), []).append(name)
    labels, ids = [r.label for r in mine], [r.image_id for r in mine]
    bboxes = [r.bbox for r in mine] if spec.bbox_crop else None
    protocol = eval_protocol(spec.bbox_crop, spec.bbox_size)
    found_per_root = []
    for config, degradation, _, idx in roots:
        paths = [idx.image_path(idx.record(i)) for i in ids]
        found: dict[str, dict[str, np.ndarray]] = {}
        for key, names in groups.items():
            ds = ScoringDataset(paths, labels, ids, protocol_transform(json.loads(key), protocol), bboxes)
            loader = make_loader(ds, batch_size, min(workers, len(ds)), device)
            desc = CLEAN if config == CLEAN else f"{config}/{degradation}"
            found.update(predict({n: models[n] for n in names}, loader, device, desc=desc, progress=progress))
        found_per_root.append(found)
    return found_per_root


def _merge(parts, where: list[np.ndarray], roots, classifiers: list[str], records, log_cells: bool) -> list[Predictions]:
    """Every rank's shard (``parts[rank]``, at positions ``where[rank]``) back into test-split order, one
    `Predictions` per root and classifier, in row order."""
    ids = np.asarray([r.image_id for r in records], np.int64)
    rel = [r.rel_path for r in records]
    out: list[Predictions] = []
    for k, (config, degradation, replicate, _) in enumerate(roots):
        for name in classifiers:
            r = {}
            for field_ in ("pred", "label", "image_id"):
                merged = np.zeros(len(ids), np.int64)
                for pos, part in zip(where, parts):
                    merged[pos] = part[k][name][field_]
                r[field_] = merged
            if not np.array_equal(r["image_id"], ids):
                raise RuntimeError("internal error: predictions are not in test-split order")
            out.append(Predictions(config, degradation, name, r["image_id"], r["label"], r["pred"], list(rel),
                                   replicate))
            if log_cells:
                log.info("%s / %s / %s%s: top-1 %.2f%% on %d images", config, degradation, name,
                         f" / replicate {replicate}" if replicate else "",
                         100.0 * float(np.mean(r["pred"] == r["label"])), len(ids))
    return out


def _meta(spec: Table2Spec, clean: CubIndex, infos: dict, mismatched: list[str]) -> dict[str, Any]:
    """What the table was scored from: roots, checkpoints with arch / preprocessing / protocol, box cropping."""
    return {
        "clean_root": str(clean.root),
        "bbox_crop": bool(spec.bbox_crop),
        "bbox_size": (list(spec.bbox_size) if spec.bbox_crop and spec.bbox_size is not None else None),
        "allow_protocol_mismatch": bool(spec.allow_protocol_mismatch),
        "protocol_mismatch": mismatched,
        "classifiers": {n: {"ckpt": str(spec.classifiers[n]), "arch": infos[n]["arch"],
                            "preprocess": infos[n]["preprocess"], "protocol": infos[n]["protocol"],
                            "clean_test_top1_at_training": infos[n]["clean_test_top1"]} for n in spec.classifiers},
        "sets": [{"config": s.config, "degradation": s.degradation, "roots": list(s.roots)} for s in spec.sets],
    }
