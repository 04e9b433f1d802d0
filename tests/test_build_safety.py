"""corruptions.degrade hardening: it never writes into a folder it did not create (unless --overwrite), the
manifest is written before the first image and then incrementally, and worker processes die with a parent
killed by SIGKILL."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import corruptions.degrade as build
from corruptions.degrade import MANIFEST_NAME, BuildConfigError, build_degraded_cub, main, variant_root
from build_fixtures import REPO, small_root, snapshot  # noqa: F401  (small_root: a fixture)
from cubdata import generate_mini_cub, read_cub
from runkit.files import sha256_file


# ------------------------------------------------------------------------------------------- foreign --out
def test_cli_refuses_an_existing_cub_root_as_out(small_root, tmp_path, capsys):
    target = tmp_path / "someone-elses-cub"
    shutil.copytree(small_root, target)
    before = snapshot(target)
    rc = main(["--cub-root", str(small_root), "--out", str(target), "--corruptions", "lowlight", "--severities", "1",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert str(target) in line and "empty folder" in line and "--overwrite" in line
    assert snapshot(target) == before
    assert not (target / "lowlight").exists()


@pytest.mark.parametrize("foreign", ["notes.txt", "fog/readme.txt", "fog/7/x.jpg", "fog/1/notes.txt", "images/a/b.jpg"])
def test_any_foreign_file_is_refused(small_root, tmp_path, foreign):
    out = tmp_path / "out"
    (out / foreign).parent.mkdir(parents=True)
    (out / foreign).write_bytes(b"mine")
    before = snapshot(out)
    with pytest.raises(BuildConfigError, match=r"not written by corruptions\.degrade.*--overwrite"):
        build_degraded_cub(small_root, out, ("lowlight",), (1,), progress=False)
    assert snapshot(out) == before


def test_empty_folder_and_own_output_are_accepted(small_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = build_degraded_cub(small_root, out, ("lowlight",), (1,), progress=False)
    assert first["written"] == 4
    # another corruption into the same OUT: the folder holds only this tool's variants
    second = build_degraded_cub(small_root, out, ("lowlight", "rain"), (1,), progress=False)
    assert second["written"] == 4 and second["skipped"] == 4


def test_overwrite_is_the_way_past(small_root, tmp_path):
    target = tmp_path / "cub-copy"
    shutil.copytree(small_root, target)
    before = snapshot(target)
    assert main(["--cub-root", str(small_root), "--out", str(target), "--corruptions", "lowlight", "--severities", "1",
                 "--overwrite", "--no-progress"]) == 0
    after = snapshot(target)
    assert {k: after[k] for k in before} == before  # others' files are left alone
    assert len(read_cub(variant_root(target, "lowlight", 1)).records) == 4
    with pytest.raises(BuildConfigError, match="not written by"):  # the other files are still there
        build_degraded_cub(small_root, target, ("lowlight",), (1,), progress=False)


def test_overwrite_rebuilds_a_variant_made_with_other_settings(small_root, tmp_path):
    out = tmp_path / "out"
    build_degraded_cub(small_root, out, ("lowlight",), (1,), progress=False)
    with pytest.raises(BuildConfigError, match=r"seed: 0 there, 1 now.*--overwrite"):
        build_degraded_cub(small_root, out, ("lowlight",), (1,), seed=1, progress=False)
    s = build_degraded_cub(small_root, out, ("lowlight",), (1,), seed=1, overwrite=True, progress=False)
    assert s["written"] == 4 and s["skipped"] == 0
    assert json.loads((variant_root(out, "lowlight", 1) / MANIFEST_NAME).read_text())["settings"]["seed"] == 1


# ------------------------------------------------------------------------------------------- manifests
def test_manifests_exist_before_the_first_image_finishes(small_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, seen = build.worker.process_image, []

    def spy(task):
        if not seen:
            seen.append({(c, s): (variant_root(out, c, s) / MANIFEST_NAME).is_file() for c in ("fog", "rain") for s in (1, 2)})
        return real(task)

    monkeypatch.setattr(build.worker, "process_image", spy)
    build_degraded_cub(small_root, out, ("fog", "rain"), (1, 2), progress=False)
    assert seen and all(seen[0].values()), seen


def _manifest_entries(out: Path) -> dict[Path, dict]:
    found = {}
    for path in out.rglob(MANIFEST_NAME):
        try:
            found[path.parent] = json.loads(path.read_text())["images"]
        except (OSError, ValueError, KeyError):
            pass  # being replaced right now
    return found


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_kill_9_parent_kills_workers_and_rerun_skips_what_was_done(tmp_path, monkeypatch):
    """SIGKILL of `python -m corruptions.degrade --workers 2` a moment after its first result: no worker
    outlives it (none goes on writing into OUT), and the manifest it left lets the re-run skip that work."""
    (tmp_path / "slow_corr.py").write_text(
        "import time\n\ndef slow(image, severity, rng):\n    time.sleep(0.2)\n    return image.copy()\n"
    )
    root = tmp_path / "cub"
    generate_mini_cub(root, n_classes=2, per_class=8)  # 8 test images x 5 severities, 0.2 s each
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "corruptions.degrade", "--cub-root", str(root), "--out", str(out),
           "--corruptions", "slow_corr:slow", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if any(_manifest_entries(out).values()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build ended before it could be killed"
        assert any(_manifest_entries(out).values()), "no manifest entry within 20 s"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = _alive(children)
        assert not survivors, f"{len(survivors)} child process(es) outlived the killed parent: {survivors}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in _alive(children):  # only on failure: do not leave orphans writing into tmp_path
            p.kill()

    # the manifest left behind is trusted on the re-run: every recorded output is skipped, not redone
    recorded = _manifest_entries(out)
    leaf, entries = max(recorded.items(), key=lambda kv: len(kv[1]))
    ok = {k: e for k, e in entries.items() if e["status"] == "ok" and sha256_file(leaf / e["path"]) == e["sha256"]}
    assert ok
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        s = build_degraded_cub(root, out, ("slow_corr:slow",), (int(leaf.name),), progress=False)
    finally:
        sys.modules.pop("slow_corr", None)
    assert s["skipped"] == len(ok) and s["written"] == 8 - len(ok) and s["failed"] == 0


@pytest.mark.parametrize("call", ["die_with_parent", "watch_parent"])
def test_a_worker_whose_parent_is_already_gone_exits(call):
    """The race the initializer closes (parent killed before it ran), and the watchdog used where prctl is
    missing: given a parent pid that is not the real parent, the process ends at once with status 1."""
    code = f"import os, runkit.process as w; w.{call}(os.getppid() + 1000000); import time; time.sleep(30)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, timeout=20)
    assert done.returncode == 1
