"""Which prior a restored set was trained against: a set restored by a network trained with DiffLoss under the
very prior that scores it was trained to minimise these terms, so the report says so.

Followed from the set's CUB root: its ``restore_manifest.json`` (`restoration.restore`) names the checkpoint,
whose recorded training config (`restoration.train`) says whether DiffLoss was on and with which ``--prior``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from diffloss.prior import PriorSpec, resolve_prior
from restoration.checkpoint import read_checkpoint_file
from restoration.restore import MANIFEST as RESTORE_MANIFEST
from runkit.files import sha256_file
from runkit.manifest import Manifest

log = logging.getLogger(__name__)

__all__ = ["prior_identity", "restorer_training", "training_notes"]


def prior_identity(spec: PriorSpec, init_seed: int = 0) -> str:
    """What makes two priors the same: the SHA-256 of the weights file, or the config and seed of random
    weights."""
    if spec.path is None:
        return f"random:{spec.config_name}:{int(init_seed)}"
    return spec.sha256 or sha256_file(spec.path)


def restorer_training(root: str | Path) -> dict | None:
    """How the network that restored the CUB root ``root`` was trained: ``{"ckpt", "diffloss", "prior",
    "prior_config", "gamma", "lam", "prior_id"}`` (``prior_id``: `prior_identity` of its prior, None when that
    cannot be resolved here), ``{"ckpt", "unknown": reason}`` when the checkpoint is gone or changed since the
    restoration, None when ``root`` is no `restoration.restore` output."""
    doc = Manifest.read(Path(root) / RESTORE_MANIFEST)
    if doc is None or not doc.get("ckpt"):
        return None
    ckpt = Path(doc["ckpt"])
    if not ckpt.is_file():
        return {"ckpt": str(ckpt), "unknown": "its checkpoint is gone"}
    if sha256_file(ckpt) != doc.get("settings", {}).get("ckpt_sha256"):
        return {"ckpt": str(ckpt), "unknown": "its checkpoint changed after the restoration"}
    config = read_checkpoint_file(ckpt).get("config") or {}
    info = {"ckpt": str(ckpt), "diffloss": bool(config.get("diffloss")), "prior": config.get("prior"),
            "prior_config": config.get("prior_config"), "gamma": config.get("gamma"), "lam": config.get("lam"),
            "prior_id": None}
    if info["diffloss"] and info["prior"] is not None:
        try:
            info["prior_id"] = prior_identity(resolve_prior(info["prior"], info["prior_config"]))
        except (OSError, ValueError) as err:
            log.warning("cannot resolve the prior %r the restorer %s was trained against: %s", info["prior"], ckpt, err)
    return info


def training_notes(sets: Mapping[str, Sequence[str | Path]], prior: PriorSpec,
                   prior_id: str) -> tuple[list[str], list[str]]:
    """``(notes, same)``: one sentence per restored set (``{name: [root, ...]}``, a root per replicate) on the
    prior its networks were trained against, and the names of the sets trained with DiffLoss against this very
    prior (``prior_id``, `prior_identity`; a set counts when any of its replicates was)."""
    notes, same = [], []
    for name, roots in sets.items():
        infos = [restorer_training(r) for r in roots]
        info = (next((i for i in infos if i and i.get("prior_id") == prior_id), None)
                or next((i for i in infos if i is not None), None))
        if info is None:
            continue
        if "unknown" in info:
            notes.append(f"'{name}': how its restorer was trained is unknown ({info['unknown']}: {info['ckpt']}).")
        elif not info["diffloss"]:
            notes.append(f"'{name}': restored by a network trained without DiffLoss.")
        elif info["prior_id"] == prior_id:
            same.append(name)
            notes.append(
                f"'{name}': restored by a network trained with DiffLoss (gamma {info['gamma']:g}, lambda "
                f"{info['lam']:g}) against THIS prior ({prior.label}). It was trained to lower exactly nat and sem "
                "under this prior, so where it scores lower that is partly by construction, not independent evidence "
                "of naturalness: score it with an independent prior too (--prior of a prior trained on another seed, "
                "or --prior random as a null).")
        else:
            which = "a prior that cannot be found here" if info["prior_id"] is None else "another prior"
            notes.append(f"'{name}': restored by a network trained with DiffLoss against {which} "
                         f"(--prior {info['prior']}); this prior scores it independently.")
    if prior.path is None:
        notes.append(f"The prior has random weights ({prior.label}): a null reference, whose terms only measure "
                     "pixel differences seen through an untrained network.")
    return notes, same
