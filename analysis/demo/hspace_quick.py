"""The h-space study's quick mode data: mini-CUB clean, degraded and restored (by the demo restorers) groups."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from runkit.files import atomic_write_bytes, sha256_file
from cubdata import read_cub, write_cub_metadata

from analysis.hspace.groups import list_group_images, select_images, slug

log = logging.getLogger(__name__)

__all__ = ["quick_groups", "subset_cub_root"]



def subset_cub_root(src_root: str | Path, dst: str | Path, image_ids: Sequence[int | str]) -> Path:
    """Copy the images ``image_ids`` of the CUB root ``src_root`` (and their metadata) into the CUB root ``dst``;
    files already there are kept. Returns ``dst``."""
    idx = read_cub(src_root)
    records = [idx.record(int(i)) for i in image_ids]
    dst = Path(dst)
    for rec in records:
        target = dst / "images" / rec.rel_path
        if not target.is_file():
            atomic_write_bytes(target, idx.image_path(rec).read_bytes())
    write_cub_metadata(idx, dst, records=records)
    return dst


def quick_groups(data_dir: str | Path, corruption: str = "lowlight", severity: int = 3, restored: bool = True,
                 cub_root: str | Path | None = None, n_images: int | None = None, seed: int = 0,
                 split: str = "test") -> dict[str, Path]:
    """The quick-mode groups on mini-CUB (or ``cub_root``): clean, degraded (``corruption`` at ``severity``,
    built with ``corruptions.degrade.build_degraded_cub`` under ``data_dir``) and, when ``restored`` and
    ``analysis.demo.restorers.ensure_demo_restorers`` is available, the degraded images restored by the demo restorers
    trained without and with DiffLoss. With ``n_images`` only that many ``split`` images (chosen as
    `select_images` chooses them with ``seed``) are copied, degraded and restored."""
    from cubdata import mini_cub_root
    from corruptions.degrade import build_degraded_cub

    data_dir = Path(data_dir)
    clean = Path(cub_root) if cub_root is not None else mini_cub_root()
    if n_images is not None and n_images > 0:
        picked = select_images({"clean": list_group_images(clean, split)}, n_images, seed)["clean"]
        data_dir = data_dir / f"subset-{split}-{len(picked)}-seed{seed}"
        clean = subset_cub_root(clean, data_dir / "clean", [it.key for it in picked])
    build_degraded_cub(cub_root=clean, out=data_dir / "degraded", corruptions=(corruption,),
                       severities=(int(severity),), split=split, progress=False)
    degraded = data_dir / "degraded" / corruption / str(int(severity))
    groups: dict[str, Path] = {"clean": clean, "degraded": degraded}
    if not restored:
        return groups
    try:
        from restoration.restore import restore_cub_root
        from analysis.demo.restorers import RESTORER_LABELS, ensure_demo_restorers
    except ImportError as err:
        log.warning("restored groups skipped: the demo restorers are not available (%s)", err)
        return groups
    ckpts = ensure_demo_restorers(corruptions=(corruption,), severity=int(severity))[corruption]
    for label in RESTORER_LABELS:
        # the checkpoint's digest names the folder, so retrained demo restorers never meet stale outputs
        digest = sha256_file(ckpts[label])[:10]
        dst = data_dir / "restored" / f"{corruption}{int(severity)}-{slug(label)}-{digest}"
        restore_cub_root(ckpts[label], degraded, dst, split=split, progress=False)  # resumable
        groups[label] = dst
    return groups
