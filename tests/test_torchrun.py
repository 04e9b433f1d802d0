"""torchrun on the CPU (gloo, 2 processes): `restoration.restore` and `analysis.classify` share the images out
between the ranks and write the same bytes as one process; an interrupted 2-process restore resumes on one
process; `restoration.train` at the same global batch gives the one-process weights (without DiffLoss; with it,
only close: see `test_train_two_processes_at_the_same_global_batch`)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cubdata import encode_image, generate_mini_cub, load_rgb, read_cub, write_cub_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc ARGS`` with one thread per process, from the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                          "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- restore
@pytest.fixture(scope="module")
def small_cub(tmp_path_factory) -> Path:
    """2 classes x 6 images (12 in all)."""
    root = tmp_path_factory.mktemp("cub") / "CUB_200_2011"
    generate_mini_cub(root, n_classes=2, per_class=6)
    return root


@pytest.fixture(scope="module")
def restorer(small_cub, tmp_path_factory) -> Path:
    """A restoration run folder trained for 2 steps on synthetic low-light pairs of ``small_cub``."""
    from restoration.train import train_restoration

    return train_restoration(out=str(tmp_path_factory.mktemp("restorer") / "run"), pairs=f"synthetic:lowlight:3:{small_cub}",
                             steps=2, crop=32, batch_size=2, val_images=0, progress=False, plot=False)


RESTORE_ARGS = ["--split", "all", "--batch-size", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def restored_once(restorer, small_cub, tmp_path_factory) -> Path:
    """The one-process reference: every image of ``small_cub`` restored in 2-image batches."""
    from restoration.restore import main

    out = tmp_path_factory.mktemp("one") / "restored"
    assert main(["--ckpt", str(restorer), "--cub-root", str(small_cub), "--out", str(out), *RESTORE_ARGS]) == 0
    return out


def test_restore_two_processes_write_the_same_folder(restorer, small_cub, restored_once, tmp_path):
    out = tmp_path / "restored"
    res = torchrun(["-m", "restoration.restore", "--ckpt", str(restorer), "--cub-root", str(small_cub), "--out", str(out),
                    *RESTORE_ARGS])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("12 restored") == 1  # rank 0 reports for both
    ref = snapshot(restored_once)
    assert len([k for k in ref if k.startswith("images/")]) == 12
    assert snapshot(out) == ref  # images, metadata and manifest: byte for byte, and no per-rank leftovers
    assert "on 2 processes" in res.stderr


FLAKY_RESTORE = """\
import os, sys
import restoration.restore as r
real, calls = r.restore_array, [0]
def flaky(*a, **k):
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 2:
        raise RuntimeError("simulated crash of rank 1")
    return real(*a, **k)
r.restore_array = flaky
sys.exit(r.main(sys.argv[1:]))
"""


def test_interrupted_two_process_restore_resumes_on_one(restorer, small_cub, restored_once, tmp_path):
    """Rank 1 dies in its second batch: rank 0 hears of it instead of waiting forever, each rank's finished
    images are in its manifest part, and a one-process resume merges the parts, restores only the rest
    and leaves the one-process run's folder."""
    from restoration.restore import MANIFEST, PART_PREFIX, restore_cub_root

    script = tmp_path / "flaky_restore.py"
    script.write_text(FLAKY_RESTORE)
    out = tmp_path / "restored"
    res = torchrun([str(script), "--ckpt", str(restorer), "--cub-root", str(small_cub), "--out", str(out), *RESTORE_ARGS])
    assert res.returncode != 0
    assert "error: rank 1 of 2 failed: RuntimeError: simulated crash of rank 1" in res.stderr
    assert json.loads((out / MANIFEST).read_text())["complete"] is False and not (out / "images.txt").exists()
    parts = {p.name: json.loads(p.read_text())["done"] for p in out.glob(f"{PART_PREFIX}*.json")}
    assert sorted(parts) == [f"{PART_PREFIX}0.json", f"{PART_PREFIX}1.json"]
    n_parts = sum(map(len, parts.values()))
    assert parts[f"{PART_PREFIX}1.json"] and n_parts < 12  # rank 1 finished its first batch, not the second

    s = restore_cub_root(restorer, small_cub, out, batch_size=2, split="all", progress=False)
    assert (s["n_skipped"], s["n_restored"]) == (n_parts, 12 - n_parts)
    assert snapshot(out) == snapshot(restored_once)


# ---------------------------------------------------------------------------------------------- classify
@pytest.fixture(scope="module")
def dark_set(mini_root, tmp_path_factory) -> Path:
    """The mini benchmark's test split, darkened (JPEG)."""
    idx = read_cub(mini_root)
    recs = idx.split("test")
    dst = tmp_path_factory.mktemp("dark") / "root"
    write_cub_metadata(idx, dst, records=recs)
    for r in recs:
        out = dst / "images" / r.rel_path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_image((load_rgb(idx.image_path(r)).astype(np.float32) * 0.2).round().astype(np.uint8),
                                     "jpeg", 95))
    return dst


def test_classify_two_processes_write_the_same_tables(tiny_ckpts, mini_root, dark_set, tmp_path):
    """120 test images in batches of 16: rank 0 scores batches 0, 2, 4, 6, rank 1 batches 1, 3, 5 and the
    short last one; rank 0 writes tables and predictions identical to a one-process run's."""
    from analysis.classify import main

    args = ["--classifier", f"vgg-mini={tiny_ckpts['vgg-mini']}", "--classifier",
            f"resnet-mini={tiny_ckpts['resnet-mini']}", "--cub-root", str(mini_root),
            "--set", f"degraded/dark={dark_set}", "--set", f"w/ DiffLoss/dark={mini_root}",
            "--loader-workers", "0", "--batch-size", "16", "--n-boot", "200", "--device", "cpu", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    res = torchrun(["-m", "analysis.classify", *args, "--out", str(two)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("written:") == 1  # rank 0 alone reports
    ref = snapshot(one)
    assert {"table.csv", "mcnemar.csv", "table.md", "table.json", "predictions/manifest.json"} <= set(ref)
    assert sum(k.startswith("predictions/") for k in ref) == 1 + 3 * 2  # (clean + 2 sets) x 2 classifiers
    records = ("config.json", "done.json")  # the run records name their own --out
    assert {k: v for k, v in snapshot(two).items() if k not in records} == {k: v for k, v in ref.items() if k not in records}
    assert json.loads((two / "config.json").read_text())["settings"]["out"] == str(two)


# ---------------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("diffloss", ["off", "on"])
def test_train_two_processes_at_the_same_global_batch(small_cub, tmp_path, diffloss):
    """``torchrun --nproc_per_node 2 -m restoration.train --batch-size 2`` against one process at ``--batch-size 4``.

    Both see the same crops (rank r takes slice r of each step's global batch of 4) and DDP averages the
    two ranks' gradients, so without DiffLoss the weights agree up to float rounding (< 1e-6). With
    DiffLoss on they cannot agree exactly: each rank draws DiffLoss's timesteps and noise from its own
    generator (seeded by the seed and the rank), so the samples of rank 1 get other draws than in one
    process. The difference enters only through the diffusion terms, weighted by gamma (1e-3), so after
    3 steps the weights still agree to 1e-4; what must hold exactly does: same steps, world size recorded,
    finite losses, and rank 0 alone wrote the run folder (the same files as one process)."""
    from restoration.train import train_restoration

    common = dict(pairs=f"synthetic:lowlight:3:{small_cub}", crop=32, steps=3, val_images=0, lr=1e-3,
                  diffloss=diffloss == "on", prior="random", device="cpu")
    one = train_restoration(out=str(tmp_path / "one"), batch_size=4, progress=False, plot=False, **common)
    res = torchrun(["-m", "restoration.train", "--pairs", common["pairs"], "--crop", "32", "--steps", "3",
                    "--batch-size", "2", "--val-images", "0", "--lr", "1e-3", "--diffloss", diffloss,
                    *(["--prior", "random"] if diffloss == "on" else []), "--device", "cpu", "--no-progress", "--no-plot", "--out", str(tmp_path / "two")])
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(one / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)
    assert (a["step"], b["step"], a["world_size"], b["world_size"]) == (3, 3, 1, 2)
    diff = max(float((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max()) for k in a["state_dict"])
    assert diff < (1e-6 if diffloss == "off" else 1e-4), diff
    assert diff > 0 or diffloss == "off"  # with DiffLoss the draws differ: equality would mean they were unused
    rows = (tmp_path / "two" / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(math.isfinite(float(r.split(",")[4])) for r in rows)  # column "total"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in one.iterdir())


# ---------------------------------------------------------------------------------------------- hspace
@pytest.fixture(scope="module")
def hspace_groups(small_cub, tmp_path_factory) -> list[str]:
    """``--set`` arguments: ``small_cub``, its low-light and its fog copy (the same 6 test images in each)."""
    from corruptions.degrade import build_degraded_cub

    out = tmp_path_factory.mktemp("hspace-groups") / "degraded"
    build_degraded_cub(cub_root=small_cub, out=out, corruptions=("lowlight", "fog"), severities=(3,), split="test",
                       progress=False)
    return ["--set", f"clean={small_cub}", "--set", f"lowlight={out / 'lowlight' / '3'}",
            "--set", f"fog={out / 'fog' / '3'}"]


# 4 images per group, one batch per group: rank 0 takes clean and fog, rank 1 lowlight and nothing in the second
# round. batch-svd edits h along a direction computed from the batch's images: a rank that batched other images
# would give other distances. The first 2 images of each group go to the grid.
HSPACE_ARGS = ["--prior", "random", "--prior-config", "tiny", "--weights", "none", "--feature-size", "32",
               "--images-per-group", "4", "--batch-size", "4", "--grid-images", "2", "--svd-mode", "batch-svd",
               "--steps", "2", "--t0", "300", "--t-edit", "100", "--levels", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def hspace_once(hspace_groups, tmp_path_factory) -> Path:
    """The one-process reference study (figures with a fixed PDF date, so the PDFs compare too)."""
    from analysis.hspace import main

    out = tmp_path_factory.mktemp("hspace-one") / "study"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "0")
        assert main([*HSPACE_ARGS, *hspace_groups, "--out", str(out)]) == 0
    return out


def study_snapshot(folder: Path) -> dict[str, bytes | str]:
    """A study folder's files as bytes, timings aside: summary.json without ``seconds_per_image`` and
    manifest.json without each image's ``seconds`` (as JSON text, key order kept)."""
    snap: dict[str, bytes | str] = snapshot(folder)
    info = json.loads(snap["summary.json"])
    info.pop("seconds_per_image")
    snap["summary.json"] = json.dumps(info)
    manifest = json.loads(snap["manifest.json"])
    for records in manifest["done"].values():
        for rec in records.values():
            rec.pop("seconds")
    snap["manifest.json"] = json.dumps(manifest)
    return snap


def test_hspace_two_processes_write_the_same_study(hspace_groups, hspace_once, tmp_path, monkeypatch):
    """Two ranks share the batches of a paper-mode study; rank 0 alone writes tables, grid PNGs, figures and
    manifest identical to one process's (timings aside)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    out = tmp_path / "study"
    res = torchrun(["-m", "analysis.hspace", *HSPACE_ARGS, *hspace_groups, "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("h-space study: 24 distances") == 1  # rank 0 alone reports
    ref = study_snapshot(hspace_once)
    assert {"distances.csv", "summary.csv", "wilcoxon.csv", "grid.png", "grid.pdf", "histograms.pdf"} <= set(ref)
    assert sum(k.startswith("generations/") for k in ref) == 3 * 2 * (1 + 1 + 2)  # groups x grid images x PNGs
    assert study_snapshot(out) == ref


FLAKY_HSPACE = """\
import os, sys
import analysis.hspace as H
import analysis.hspace.study as S
real, calls = S._study_batch, [0]
def flaky(*a, **k):
    calls[0] += 1
    if os.environ["RANK"] == "0" and calls[0] == 2:
        raise RuntimeError("simulated crash of rank 0")
    return real(*a, **k)
S._study_batch = flaky
sys.exit(H.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_interrupted_two_process_hspace_resumes_on_one(hspace_groups, hspace_once, tmp_path, monkeypatch):
    """Rank 0 dies in its second batch (the second round, where rank 1 has none): rank 1 hears of it, the
    manifest holds the first round (clean and lowlight), and a one-process resume computes only the fog group
    and leaves the one-process study."""
    import analysis.hspace as H
    import analysis.hspace.study as S

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    script = tmp_path / "flaky_hspace.py"
    script.write_text(FLAKY_HSPACE)
    out = tmp_path / "study"
    res = torchrun([str(script), *HSPACE_ARGS, *hspace_groups, "--out", str(out)])
    assert res.returncode != 0
    assert "error: rank 0 of 2 failed: RuntimeError: simulated crash of rank 0" in res.stderr
    done = json.loads((out / "manifest.json").read_text())["done"]
    assert {g: len(recs) for g, recs in done.items()} == {"clean": 4, "lowlight": 4}
    assert not (out / "distances.csv").exists()

    real, computed = S._study_batch, []

    def counting(model, spaced, extractor, batch, *a, **k):
        computed.extend(it.key for _, it in batch)
        return real(model, spaced, extractor, batch, *a, **k)

    monkeypatch.setattr(S, "_study_batch", counting)
    assert H.main([*HSPACE_ARGS, *hspace_groups, "--out", str(out)]) == 0
    assert len(computed) == 4 and set(computed) == set(done["clean"])  # the fog copies of the same images
    assert study_snapshot(out) == study_snapshot(hspace_once)
