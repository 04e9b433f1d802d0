"""What Table 2 scores: the clean CUB root, the classifiers and the degraded / restored sets, from flags or a
JSON/YAML spec file, and the checks that a set and a classifier fit the clean root and the protocol."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifiers import URIE_BBOX_SIZE, describe_protocol, eval_protocol, parse_bbox_size, protocol_preprocess
from cubdata import CubIndex
from runkit.cli import parse_set

__all__ = ["CLEAN", "DEGRADED", "SetSpec", "Table2Spec", "parse_set_arg", "parse_classifier_arg", "load_spec",
           "check_same_test_split", "check_classes", "check_protocol"]

#: The row (and column) of the clean test split, given by ``--cub-root``; no set may use the name.
CLEAN = "clean"
#: The row name of the degraded copies (`corruptions.degrade`) by convention: the baseline the restored rows
#: are compared with.
DEGRADED = "degraded"
_SPEC_KEYS = ("cub_root", "classifiers", "sets", "bbox_crop", "bbox_size", "allow_protocol_mismatch", "out")


@dataclass(frozen=True)
class SetSpec:
    """One scored cell group: the test split of the CUB root(s) ``roots`` under row ``config`` and column group
    ``degradation``. Several roots are replicates: restorations of the same degraded set, one per restorer
    seed (``SetSpec("w/ DiffLoss", "fog", ("r/s0", "r/s1", "r/s2"))``); the table reports their mean with a
    two-level bootstrap CI (`analysis.stats.two_level_bootstrap`). A single root may be given as a string."""

    config: str
    degradation: str
    roots: tuple[str, ...]

    def __post_init__(self) -> None:
        roots = (self.roots,) if isinstance(self.roots, (str, os.PathLike)) else tuple(self.roots)
        object.__setattr__(self, "roots", tuple(str(r) for r in roots))
        if not self.roots or not all(r.strip() for r in self.roots):
            raise ValueError(f"set '{self.config}/{self.degradation}' needs at least one non-empty root, got "
                             f"{self.roots!r}")


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
            raise ValueError("no clean CUB root given (--cub-root CUB_ROOT or 'cub_root:' in the spec file)")
        if not self.classifiers:
            raise ValueError("no classifier given (--classifier NAME=CKPT or 'classifiers:' in the spec file)")
        seen = set()
        for s in self.sets:
            if not s.config or not s.degradation:
                raise ValueError(f"set {s} needs a non-empty config and degradation")
            if s.config == CLEAN or s.degradation == CLEAN:
                raise ValueError(f"'{CLEAN}' is reserved for the clean row (given by --cub-root); rename set "
                                 f"'{s.config}/{s.degradation}'")
            key = (s.config, s.degradation)
            if key in seen:
                raise ValueError(f"set '{s.config}/{s.degradation}' is given twice")
            seen.add(key)
            twice = sorted({r for r in s.roots if s.roots.count(r) > 1})
            if twice:
                raise ValueError(f"set '{s.config}/{s.degradation}' lists {twice[0]} twice; each replicate must be "
                                 "another restoration (one per restorer seed)")
        if self.bbox_size is not None:
            resize, crop = (int(v) for v in self.bbox_size)
            if not 16 <= crop <= resize:
                raise ValueError(f"bbox_size must be (resize, crop) with 16 <= crop <= resize, got {self.bbox_size}")


def parse_set_arg(text: str) -> SetSpec:
    """``"CONFIG/DEGRADATION=ROOT[,ROOT...]"`` -> `SetSpec` (`runkit.cli.parse_set`: the label ends at the
    last ``=``, commas separate replicate roots, one per restorer seed); the last ``/`` of the label separates
    config and degradation (``"w/o DiffLoss/fog=..."`` -> config ``"w/o DiffLoss"``, degradation ``"fog"``)."""
    try:
        key, roots = parse_set(text)
    except ValueError:
        key, roots = "", []
    config, slash, degradation = key.rpartition("/")
    if not roots or not slash or not config.strip() or not degradation.strip():
        raise ValueError(f"--set: expected CONFIG/DEGRADATION=ROOT or CONFIG/DEGRADATION=ROOT1,ROOT2,... (one root "
                         f"per restorer seed; e.g. '{DEGRADED}/fog=cub-degraded/fog/3'), got {text!r}")
    return SetSpec(config.strip(), degradation.strip(), tuple(roots))


def parse_classifier_arg(text: str) -> tuple[str, str]:
    """``"NAME=CKPT"`` -> ``(name, ckpt)``. If NAME is a registry architecture, the checkpoint must hold it."""
    name, eq, ckpt = text.partition("=")
    if not eq or not name.strip() or not ckpt.strip():
        raise ValueError(f"expected NAME=CKPT (e.g. 'resnet50=ckpt/resnet50.pt'), got {text!r}")
    return name.strip(), ckpt.strip()


# ---------------------------------------------------------------------------------------------- spec files
def _resolve(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else base / q)


def _read_spec_doc(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"spec file {path} not found")
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"spec file {path} is not readable {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                         f"{' '.join(str(err).split())[:200]}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"spec file {path} must hold a mapping with 'cub_root', 'classifiers', 'sets'; found "
                         f"{type(doc).__name__}")
    unknown = set(doc) - set(_SPEC_KEYS)
    if unknown:
        raise ValueError(f"spec file {path}: unknown keys {sorted(unknown)}; valid keys: {sorted(_SPEC_KEYS)}")
    return doc


def _spec_classifiers(raw: Any, base: Path) -> dict[str, str]:
    items = raw.items() if isinstance(raw, dict) else (parse_classifier_arg(str(t)) for t in raw)
    return {str(name): _resolve(base, str(ckpt)) for name, ckpt in items}


def _roots(val: Any, where: str, path: Path) -> tuple[str, ...]:
    """A set's root(s) in a spec file: one path, or a list of paths (replicates, one per restorer seed)."""
    if isinstance(val, (list, tuple)) and val and all(isinstance(v, (str, os.PathLike)) for v in val):
        return tuple(str(v) for v in val)
    if isinstance(val, (str, os.PathLike)) and str(val).strip():
        return (str(val),)
    raise ValueError(f"spec file {path}: set '{where}' needs a root or a list of roots (one per restorer seed), "
                     f"found {val!r}")


def _spec_set(item: Any, path: Path) -> SetSpec:
    """One entry of a list of sets: ``"CONFIG/DEGRADATION=ROOT[,ROOT...]"`` or ``{config, degradation, root}``
    (``roots: [...]`` for replicates)."""
    if isinstance(item, str):
        return parse_set_arg(item)
    if isinstance(item, dict) and {"config", "degradation"} <= set(item) and len({"root", "roots"} & set(item)) == 1:
        where = f"{item['config']}/{item['degradation']}"
        return SetSpec(str(item["config"]), str(item["degradation"]),
                       _roots(item.get("root", item.get("roots")), where, path))
    raise ValueError(f"spec file {path}: each set must be 'CONFIG/DEGRADATION=ROOT' or a mapping with "
                     f"config, degradation and root (or roots: a list, one per restorer seed); found {item!r}")


def _spec_sets(raw: Any, path: Path) -> list[SetSpec]:
    """The ``sets`` of a spec file: a mapping ``"CONFIG/DEGRADATION"`` -> root(s) or config -> {degradation:
    root(s)}, or a list (`_spec_set`); a list of roots is one set's replicates; roots resolved against the
    file's folder."""
    if isinstance(raw, dict):
        found = []
        for key, val in raw.items():
            if isinstance(val, dict):
                found += [SetSpec(str(key), str(deg), _roots(roots, f"{key}/{deg}", path)) for deg, roots in val.items()]
            else:
                config, slash, degradation = str(key).rpartition("/")
                if not slash or not config.strip() or not degradation.strip():
                    raise ValueError(f"spec file {path}: set key {key!r} must be CONFIG/DEGRADATION (or a config "
                                     "holding {degradation: root})")
                found.append(SetSpec(config.strip(), degradation.strip(), _roots(val, str(key), path)))
    elif isinstance(raw, list):
        found = [_spec_set(item, path) for item in raw]
    else:
        raise ValueError(f"spec file {path}: 'sets' must be a mapping or a list, found {type(raw).__name__}")
    return [SetSpec(s.config, s.degradation, tuple(_resolve(path.parent, r) for r in s.roots)) for s in found]


def load_spec(path: str | Path) -> tuple[Table2Spec, dict[str, Any]]:
    """Read a JSON or YAML spec file. Returns the spec and the file's other options (``out``, ...).

    Keys: ``cub_root`` (the clean root), ``classifiers`` (mapping name -> checkpoint, or list of
    ``"NAME=CKPT"``), ``sets`` (mapping ``"CONFIG/DEGRADATION"`` -> root, nested mapping config ->
    {degradation: root}, or a list of ``{config, degradation, root}``; wherever a root goes, a list of roots
    gives the set's replicates, one per restorer seed), optional ``bbox_crop``, ``bbox_size`` (``"256,227"``,
    ``[256, 227]`` or ``"classifier"``), ``allow_protocol_mismatch``, ``out``. Relative paths are relative
    to the spec file's folder.
    """
    path = Path(path)
    doc = _read_spec_doc(path)
    base = path.parent
    classifiers = _spec_classifiers(doc.get("classifiers") or {}, base)
    sets = _spec_sets(doc.get("sets") or {}, path)
    clean = _resolve(base, str(doc["cub_root"])) if doc.get("cub_root") else ""
    extra = {"out": _resolve(base, str(doc["out"]))} if "out" in doc else {}
    bbox_size = parse_bbox_size(doc["bbox_size"]) if "bbox_size" in doc else URIE_BBOX_SIZE
    return Table2Spec(clean, classifiers, sets, bool(doc.get("bbox_crop", False)), bbox_size,
                      bool(doc.get("allow_protocol_mismatch", False))), extra


# ---------------------------------------------------------------------------------------------- checks
def _stem(rel_path: str) -> str:
    p = Path(rel_path)
    return (p.parent / p.stem).as_posix()


def _some(ids: list[int]) -> str:
    return f"(ids {ids[:5]}{'...' if len(ids) > 5 else ''})"


def check_same_test_split(clean: CubIndex, other: CubIndex, what: str = "set") -> None:
    """Raise ValueError unless ``other``'s test split has exactly the clean test split's image ids, relative
    paths (the extension may differ) and class ids."""
    a = {r.image_id: r for r in clean.split("test")}
    b = {r.image_id: r for r in other.split("test")}
    problems = []
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    if missing:
        problems.append(f"{len(missing)} clean test image(s) missing {_some(missing)}")
    if extra:
        problems.append(f"{len(extra)} image(s) not in the clean test split {_some(extra)}")
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
            "python -m corruptions.degrade / restoration.restore from the same clean root)."
        )


def check_classes(name: str, info: dict, clean: CubIndex) -> None:
    """Raise ValueError unless the classifier ``name`` (``info`` from `classifiers.load_classifier`) predicts
    the clean root's classes, by number and by name, in its order."""
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
