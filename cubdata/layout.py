"""Read and validate the CUB-200-2011 folder layout.

A CUB root holds ``images.txt`` (``<id> <class_dir>/<file>``), ``image_class_labels.txt`` (``<id> <class>``,
1-based), ``train_test_split.txt`` (``<id> <1=train|0=test>``), ``classes.txt`` (``<class> <name>``),
optionally ``bounding_boxes.txt`` (``<id> <x> <y> <w> <h>``, pixels) and ``images/<class_dir>/<file>``.
Degraded and restored copies written by this toolkit ("variant roots") use the same layout, so the same
reader serves them; a variant may store ``.png`` where the original had ``.jpg`` and `CubIndex.image_path`
resolves that.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from runkit.files import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "CubLayoutError",
    "CubRecord",
    "CubIndex",
    "read_cub",
    "write_cub_metadata",
    "REQUIRED_FILES",
    "METADATA_FILES",
    "FULL_CUB_COUNTS",
]

REQUIRED_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
METADATA_FILES = REQUIRED_FILES + ("bounding_boxes.txt",)
#: The real dataset (CUB.md): classes, images, train, test.
FULL_CUB_COUNTS = {"classes": 200, "images": 11788, "train": 5994, "test": 5794}
_ALT_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class CubLayoutError(ValueError):
    """The folder is not a valid CUB root; the message lists every problem found."""


@dataclass(frozen=True)
class CubRecord:
    """One image of a CUB root. ``class_id`` is 1-based as in the files; ``label`` is 0-based."""

    image_id: int
    rel_path: str
    class_id: int
    is_train: bool
    bbox: tuple[float, float, float, float] | None = None

    @property
    def label(self) -> int:
        return self.class_id - 1


@dataclass
class CubIndex:
    """The parsed, cross-checked metadata of a CUB root."""

    root: Path
    classes: dict[int, str]
    records: list[CubRecord]
    _by_id: dict[int, CubRecord] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {r.image_id: r for r in self.records}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, split: str = "test") -> list[CubRecord]:
        """Records of ``split``: ``"train"``, ``"test"`` or ``"all"``."""
        if split == "all":
            return list(self.records)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        want = split == "train"
        return [r for r in self.records if r.is_train == want]

    def record(self, image_id: int) -> CubRecord:
        try:
            return self._by_id[int(image_id)]
        except KeyError:
            raise KeyError(f"image id {image_id} is not in {self.root}/images.txt") from None

    def image_path(self, rec: CubRecord) -> Path:
        """Path of ``rec``'s image file. If the exact name is absent, a file with the same stem and
        another image suffix (a variant root saved as PNG) is returned; else the expected path."""
        p = self.root / "images" / rec.rel_path
        if p.exists():
            return p
        for suf in _ALT_SUFFIXES:
            q = p.with_suffix(suf)
            if q.exists():
                return q
        return p

    def class_name(self, class_id: int) -> str:
        return self.classes[int(class_id)]


def _read_table(path: Path, ncols: int, problems: list[str], kind=(int, str)) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=ncols - 1) if ncols == 2 else line.split()
            if len(parts) != ncols:
                problems.append(f"{path.name}:{lineno}: expected {ncols} fields, found {len(parts)}: {line[:80]!r}")
                continue
            rows.append(parts)
    return rows


def _ids(rows, name, problems):
    out = {}
    for parts in rows:
        try:
            key = int(parts[0])
        except ValueError:
            problems.append(f"{name}: id {parts[0]!r} is not an integer")
            continue
        if key in out:
            problems.append(f"{name}: id {key} appears twice")
        out[key] = parts[1:]
    return out


def _check_root(root: Path) -> None:
    """The two problems that stop reading at once: no folder, or a folder without the metadata files."""
    if not root.is_dir():
        raise CubLayoutError(
            f"CUB root {root} does not exist or is not a folder. Expected the extracted CUB_200_2011 folder "
            "(with images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/); "
            "CUB-200-2011 is distributed by data.caltech.edu (CUB_200_2011.tgz)."
        )
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise CubLayoutError(
            f"{root} is not a CUB root: missing {', '.join(missing)} "
            f"(a CUB root needs {', '.join(REQUIRED_FILES)} and images/<class>/<file>). "
            "If you meant the dataset archive's top folder, point at its CUB_200_2011/ subfolder."
        )


def _read_bboxes(root: Path, problems: list[str]) -> dict[int, tuple[float, float, float, float]]:
    bboxes: dict[int, tuple[float, float, float, float]] = {}
    if (root / "bounding_boxes.txt").is_file():
        for parts in _read_table(root / "bounding_boxes.txt", 5, problems):
            try:
                bboxes[int(parts[0])] = tuple(float(v) for v in parts[1:])  # type: ignore[assignment]
            except ValueError:
                problems.append(f"bounding_boxes.txt: malformed line {' '.join(parts)!r}")
    return bboxes


def _check_coverage(ids: set[int], tables: dict[str, dict], bboxes: dict, problems: list[str]) -> None:
    """Every image id of images.txt has a class and a split, and nothing else does."""
    for name, table in tables.items():
        lacking = sorted(ids - set(table))
        extra = sorted(set(table) - ids)
        if lacking:
            problems.append(f"{name}: no entry for {len(lacking)} image id(s) of images.txt, e.g. {lacking[:5]}")
        if extra:
            problems.append(f"{name}: {len(extra)} id(s) not in images.txt, e.g. {extra[:5]}")
    if bboxes and set(bboxes) != ids:
        problems.append(f"bounding_boxes.txt: covers {len(set(bboxes) & ids)} of {len(ids)} image ids")


def _records(images: dict, labels: dict, splits: dict, classes: dict[int, str], bboxes: dict,
             problems: list[str]) -> list[CubRecord]:
    """One record per image id with a class and a split; class ids, split flags and class folders checked."""
    records: list[CubRecord] = []
    folder_class: dict[str, int] = {}
    for image_id in sorted(images):
        rel = images[image_id][0]
        if image_id not in labels or image_id not in splits:
            continue
        try:
            class_id = int(labels[image_id][0])
            flag = int(splits[image_id][0])
        except ValueError:
            problems.append(f"image {image_id}: non-integer class or split value")
            continue
        if class_id not in classes:
            problems.append(f"image_class_labels.txt: image {image_id} has class {class_id}, not in classes.txt")
        if flag not in (0, 1):
            problems.append(f"train_test_split.txt: image {image_id} has split {flag}, expected 1 (train) or 0 (test)")
        folder = rel.split("/")[0] if "/" in rel else ""
        if folder:
            prev = folder_class.setdefault(folder, class_id)
            if prev != class_id:
                problems.append(f"images.txt: folder {folder!r} holds images of classes {prev} and {class_id}")
        records.append(CubRecord(image_id, rel, class_id, flag == 1, bboxes.get(image_id)))
    return records


def _check_image_files(index: CubIndex, problems: list[str]) -> None:
    missing_files = [rec.rel_path for rec in index.records if not index.image_path(rec).is_file()]
    if missing_files:
        problems.append(
            f"images/: {len(missing_files)} of {len(index.records)} image file(s) listed in images.txt are missing, "
            f"e.g. {missing_files[:3]}"
        )


def _check_full_counts(index: CubIndex, problems: list[str]) -> None:
    counts = {
        "classes": len(index.classes),
        "images": len(index.records),
        "train": sum(r.is_train for r in index.records),
        "test": sum(not r.is_train for r in index.records),
    }
    for key, want in FULL_CUB_COUNTS.items():
        if counts[key] != want:
            problems.append(f"expected {want} {key} in the full CUB-200-2011, found {counts[key]}")


def read_cub(root: str | os.PathLike, *, check_images: bool = True, expect_full: bool = False) -> CubIndex:
    """Parse and cross-check the CUB root at ``root``.

    Checks that the required metadata files exist, that every image id has a class and a split, that
    every class id is in ``classes.txt``, that class folders agree with class ids, and (``check_images``)
    that every image file exists. ``expect_full`` also checks the real dataset's counts (200 classes,
    11,788 images, 5,994 train / 5,794 test). All problems are reported in one `CubLayoutError`.
    """
    root = Path(root)
    _check_root(root)
    problems: list[str] = []
    tables = {name: _ids(_read_table(root / name, 2, problems), name, problems) for name in REQUIRED_FILES}
    images, labels, splits = (tables[n] for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt"))
    classes = {k: v[0] for k, v in tables["classes.txt"].items()}
    bboxes = _read_bboxes(root, problems)
    _check_coverage(set(images), {n: tables[n] for n in ("image_class_labels.txt", "train_test_split.txt")}, bboxes,
                    problems)
    index = CubIndex(root=root, classes=classes, records=_records(images, labels, splits, classes, bboxes, problems))
    if check_images:
        _check_image_files(index, problems)
    if expect_full:
        _check_full_counts(index, problems)
    if problems:
        shown = "\n  - ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CubLayoutError(f"invalid CUB root {root}: {len(problems)} problem(s)\n  - {shown}{more}")
    log.debug("read CUB root %s: %d images, %d classes", root, len(index.records), len(classes))
    return index


def write_cub_metadata(
    index: CubIndex,
    dst_root: str | os.PathLike,
    records: list[CubRecord] | None = None,
    rel_paths: dict[int, str] | None = None,
) -> Path:
    """Write the metadata files of ``index`` into ``dst_root`` so that it is a valid CUB root.

    ``records`` restricts the listed images (e.g. only the test split that a builder wrote; all classes
    are kept). ``rel_paths`` optionally maps image id -> new relative path (e.g. ``.png`` names). Files are
    written atomically; ``images/`` is the caller's job.
    """
    dst = Path(dst_root)
    dst.mkdir(parents=True, exist_ok=True)
    rel_paths = rel_paths or {}
    recs = index.records if records is None else sorted(records, key=lambda r: r.image_id)
    atomic_write_text(dst / "images.txt", "".join(f"{r.image_id} {rel_paths.get(r.image_id, r.rel_path)}\n" for r in recs))
    atomic_write_text(dst / "image_class_labels.txt", "".join(f"{r.image_id} {r.class_id}\n" for r in recs))
    atomic_write_text(dst / "train_test_split.txt", "".join(f"{r.image_id} {int(r.is_train)}\n" for r in recs))
    atomic_write_text(dst / "classes.txt", "".join(f"{k} {v}\n" for k, v in sorted(index.classes.items())))
    if recs and all(r.bbox is not None for r in recs):
        atomic_write_text(
            dst / "bounding_boxes.txt",
            "".join(f"{r.image_id} " + " ".join(f"{v:.1f}" for v in r.bbox) + "\n" for r in recs),  # type: ignore[union-attr]
        )
    return dst
