"""Issue 18, outside analysis/: nothing a user has is ever overwritten, every failure is one line, and every check
comes before the first write. One test (or parametrised family) per numbered case of the issue, each of which
failed before its fix: foreign run folders (1), restore into a CUB root (2), an unreadable image in a DataLoader
worker (3), an unwritable --out (4), a full disk and periodic checkpoints (5), --threads -1 (7), checks after
writes (8), Ctrl-C (9), orphaned DataLoader workers (10), contradictory flags (11) and the small fixes (12).

Everything runs on a 2-class CUB root of 8 tiny images with a few training steps; the two subprocess tests
(Ctrl-C, kill -9) take a few seconds each."""
from __future__ import annotations

import errno
import importlib
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
import torch

from cubdata import generate_mini_cub, read_cub
from runkit.errors import INTERRUPTED, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """``good``: a 2-class x 4-image CUB root (4 train, 4 test); ``bad_train`` / ``bad_test``: copies whose
    first train / test image is not an image; ``ckpt``: an untrained small restoration checkpoint."""
    from restoration.checkpoint import CKPT_FORMAT
    from restoration.nets import build_net

    base = tmp_path_factory.mktemp("hardening")
    good = base / "good"
    generate_mini_cub(good, n_classes=2, per_class=4)
    out = {"good": good, "base": base}
    for split in ("train", "test"):
        bad = base / f"bad_{split}"
        shutil.copytree(good, bad)
        idx = read_cub(bad)
        path = idx.image_path(idx.split(split)[0])
        path.write_bytes(b"junk")
        out[f"bad_{split}"], out[f"bad_{split}_image"] = bad, path
    net = build_net("small-unet", base=4, depth=1)
    out["ckpt"] = base / "ckpt.pt"
    torch.save({"format": CKPT_FORMAT, "net": "small-unet", "net_kwargs": {"base": 4, "depth": 1},
                "state_dict": net.state_dict(), "step": 1}, out["ckpt"])
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _call(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def _error_line(capsys, rc, *needles) -> str:
    """The one ``error: ...`` line of a refused command (log lines may precede it; no traceback)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _forbid(monkeypatch, target: str) -> None:
    module, attr = target.rsplit(".", 1)

    def fail(*a, **k):
        raise AssertionError(f"{target} ran although the command should have been refused first")

    monkeypatch.setattr(importlib.import_module(module), attr, fail)


#: The commands of this part of issue 18: module, arguments (with {good}, {ckpt}, {mini}), the work that must
#: not start when the arguments are refused.
COMMANDS = {
    "restoration.train": ("restoration.train", ["--pairs", "synthetic:fog:3:{good}", "--steps", "2", "--crop", "32",
                                                "--batch-size", "2", "--val-images", "2", "--no-plot"],
                          "restoration.train.cli.train_restoration"),
    "diffloss.prior.train": ("diffloss.prior.train", ["--prior-config", "tiny", "--cub-root", "{good}", "--steps", "1",
                                                      "--batch-size", "2", "--sample-images", "1", "--sample-steps", "2"],
                             "diffloss.prior.train.cli.train_prior"),
    "classifiers.finetune": ("classifiers.finetune", ["--arch", "vgg-mini", "--cub-root", "{good}", "--epochs", "1",
                                                      "--batch-size", "2", "--img-size", "32", "--weights", "none",
                                                      "--loader-workers", "0"],
                             "classifiers.finetune.cli.finetune"),
    "restoration.restore": ("restoration.restore", ["--ckpt", "{ckpt}", "--cub-root", "{good}", "--batch-size", "2"],
                            "restoration.restore.restore_cub_root"),
    "corruptions.degrade": ("corruptions.degrade", ["--cub-root", "{good}", "--corruptions", "lowlight",
                                                    "--severities", "1"],
                            "corruptions.degrade.cli.run_build"),
    "corruptions.preview": ("corruptions.preview", ["{image}", "--corruptions", "fog", "--severities", "1"],
                            "corruptions.preview._main"),
}
RUN_FOLDER_COMMANDS = ("restoration.train", "diffloss.prior.train", "classifiers.finetune")
THREADS_COMMANDS = ("restoration.train", "diffloss.prior.train", "classifiers.finetune", "restoration.restore")


def _argv(command: str, roots, out, *extra) -> tuple[object, list[str]]:
    """``(main, argv)`` of ``command`` writing to ``out``, with ``extra`` flags last."""
    module, args, _ = COMMANDS[command]
    image = read_cub(roots["good"]).image_path(read_cub(roots["good"]).records[0])
    argv = [a.format(good=roots["good"], ckpt=roots["ckpt"], image=image) for a in args] + ["--out", str(out)]
    if command != "corruptions.preview":
        argv += ["--no-progress"]
    if command in THREADS_COMMANDS:
        argv += ["--threads", "1"]
    return importlib.import_module(module).main, [*argv, *extra]


# ------------------------------------------------------------------------------- 1. a foreign run folder is kept
@pytest.mark.parametrize("files", [("log.csv", "config.json"), ("log.csv",), ("val.csv",), ("done.json",)],
                         ids=lambda f: "+".join(f))
@pytest.mark.parametrize("command", RUN_FOLDER_COMMANDS)
def test_a_foreign_run_folder_is_refused_and_kept(command, files, roots, tmp_path, capsys):
    """The issue's reproduction (``echo mine > x/log.csv; echo mine > x/config.json``) and folders holding only a
    file named like an output or a record: refused in one line, nothing rewritten, nothing added."""
    out = tmp_path / "x"
    out.mkdir()
    for name in files:
        (out / name).write_text("mine\n")
    main, argv = _argv(command, roots, out)
    _error_line(capsys, _call(main, argv), str(out), "--overwrite")
    assert snapshot(out) == {name: b"mine\n" for name in files}


# ------------------------------------------------------------------------- 2. restore --overwrite into a CUB root
def test_restore_overwrite_never_rewrites_a_cub_root(roots, tmp_path, capsys):
    target = tmp_path / "someone-elses-cub"
    shutil.copytree(roots["good"], target)
    before = snapshot(target)
    main, argv = _argv("restoration.restore", roots, target, "--overwrite")
    line = _error_line(capsys, _call(main, argv), str(target), "images.txt", "even with --overwrite", "empty folder")
    assert "pass --overwrite" not in line
    assert snapshot(target) == before


# --------------------------------------------------------------- 3. an unreadable image in a DataLoader worker
def test_an_unreadable_image_in_a_dataloader_worker_is_one_line_naming_it(roots, capsys):
    """The image breaks after any up-front check (here: no check at all): the worker's re-raised exception
    reaches the user as the original message, not the worker's flattened traceback."""
    from classifiers.predict import make_loader
    from cubdata import CubDataset

    ds = CubDataset(read_cub(roots["bad_train"], check_images=False), "train", transform=lambda im: torch.zeros(3))

    def work():
        for _ in make_loader(ds, 2, 1, torch.device("cpu")):
            pass

    line = _error_line(capsys, run_cli(work), f"cannot decode image {roots['bad_train_image']}", "replace it")
    assert "DataLoader worker" not in line and "Original Traceback" not in line and "File " not in line


def test_finetune_refuses_an_unreadable_image_before_training(roots, tmp_path, capsys):
    from classifiers.finetune import main

    out = tmp_path / "ft"
    argv = [a.format(good=roots["bad_test"]) for a in COMMANDS["classifiers.finetune"][1]]
    rc = _call(main, [*argv, "--out", str(out), "--threads", "1", "--no-progress", "--loader-workers", "1"])
    _error_line(capsys, rc, str(roots["bad_test_image"]))
    assert not out.exists()


# ---------------------------------------------------------------------------------- 4. an unwritable --out
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_under_a_file_is_refused_before_any_work(command, roots, tmp_path, capsys, monkeypatch):
    _forbid(monkeypatch, COMMANDS[command][2])
    (tmp_path / "FILE").write_text("a file")
    main, argv = _argv(command, roots, tmp_path / "FILE" / "sub")
    _error_line(capsys, _call(main, argv), str(tmp_path / "FILE"), "is a file, not a folder")


@pytest.mark.parametrize("how", ["permissions", "read-only mount"])
@pytest.mark.parametrize("command", ["corruptions.degrade", "restoration.restore"])
def test_a_read_only_out_is_refused_before_any_work(command, how, roots, tmp_path, capsys, monkeypatch):
    """os.access/statvfs are stubbed for the folder: the suite may run as root, who may write anywhere."""
    ro = tmp_path / "ro"
    ro.mkdir()
    _forbid(monkeypatch, COMMANDS[command][2])
    if how == "permissions":
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real(p, mode, **k))
    else:
        real_statvfs = os.statvfs

        class _ReadOnly:
            f_flag = os.ST_RDONLY

        monkeypatch.setattr(os, "statvfs", lambda p: _ReadOnly() if Path(p) == ro else real_statvfs(p))
    main, argv = _argv(command, roots, ro / "out")
    _error_line(capsys, _call(main, argv), str(ro), "is not writable")
    assert list(ro.iterdir()) == []


# ------------------------------------------------------------------------------------------- 5. a full disk
def _disk_full(monkeypatch) -> None:
    """Every atomic write raises ENOSPC, as `runkit.files.atomic_write_bytes` reports it (file, bytes needed)."""
    import runkit.files

    def full(path, data, durable=True):
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        err.filename, err.needed_bytes = str(path), len(data)
        raise err

    monkeypatch.setattr(runkit.files, "atomic_write_bytes", full)  # text, CSV, torch and JSON writers call it
    for module in ("corruptions.degrade.worker", "restoration.restore", "corruptions.preview",
                   "diffloss.prior.train.outputs", "diffloss.prior.loading", "restoration.train.plots"):
        monkeypatch.setattr(importlib.import_module(module), "atomic_write_bytes", full)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_full_disk_is_one_line_naming_the_folder_and_the_space(command, roots, tmp_path, capsys, monkeypatch):
    _disk_full(monkeypatch)
    out = tmp_path / "out"
    main, argv = _argv(command, roots, out)
    line = _error_line(capsys, _call(main, argv), "error: disk full writing", str(out), "free", "this file needs",
                       "rerun the same command to resume")
    assert "Traceback" not in line


def test_the_atomic_writer_reports_the_file_and_its_size_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    from runkit import files

    def no_room(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_room)
    target = tmp_path / "run" / "ckpt.pt"
    rc = run_cli(lambda: files.atomic_write_bytes(target, b"x" * 2500), out=tmp_path / "run")
    _error_line(capsys, rc, f"disk full writing {target}: {target.parent} has", "this file needs 2.5 KB")
    assert os.listdir(target.parent) == []


def test_training_checkpoints_by_wall_time_so_a_failure_loses_little(roots, tmp_path, monkeypatch):
    """``--ckpt-every 0`` no longer means "only at the end": ``--ckpt-minutes`` (on by default) saves anyway;
    a run stopped at step 3 by a full disk keeps step 2 and resumes from it."""
    from restoration.train import TrainConfig, train_restoration
    import restoration.train.loop as loop

    assert TrainConfig(out="x").ckpt_minutes > 0 and TrainConfig(out="x").ckpt_every > 0
    real, calls = loop._train_step, {"n": 0}

    def third_step_fails(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "ckpt.pt"))
        return real(*a, **k)

    monkeypatch.setattr(loop, "_train_step", third_step_fails)
    kw = dict(out=str(tmp_path / "run"), pairs=f"synthetic:fog:3:{roots['good']}", steps=4, crop=32, batch_size=2,
              val_images=0, ckpt_every=0, ckpt_minutes=1e-9, progress=False, plot=False)
    with pytest.raises(OSError):
        train_restoration(**kw)
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(loop, "_train_step", real)
    train_restoration(**kw)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]


# ------------------------------------------------------------------------------------------------ 7. --threads -1
@pytest.mark.parametrize("command", THREADS_COMMANDS)
def test_negative_threads_is_one_line(command, roots, tmp_path, capsys, monkeypatch):
    _forbid(monkeypatch, COMMANDS[command][2])
    main, argv = _argv(command, roots, tmp_path / "out")
    argv[argv.index("--threads") + 1] = "-1"
    _error_line(capsys, _call(main, argv), "--threads must be an integer >= 0, got -1")
    assert not (tmp_path / "out").exists()


def test_run_cli_checks_threads_before_setting_them(capsys):
    """For the commands that pass no config: torch.set_num_threads(-1) would raise a RuntimeError traceback."""
    _error_line(capsys, run_cli(lambda: 0, threads=-1), "--threads must be an integer >= 0, got -1")


# ------------------------------------------------------------------------------- 8. every check before any write
@pytest.mark.parametrize("command", ["restoration.train", "diffloss.prior.train"])
def test_a_broken_training_image_is_refused_before_config_json(command, roots, tmp_path, capsys):
    out = tmp_path / "run"
    main, argv = _argv(command, roots, out)
    argv = [a.replace(str(roots["good"]), str(roots["bad_train"])) for a in argv]
    _error_line(capsys, _call(main, argv), f"cannot decode image {roots['bad_train_image']}")
    assert not out.exists()


def test_restore_refuses_a_bad_quality_and_an_input_that_is_no_image_before_writing(roots, tmp_path, capsys):
    from restoration.restore import restore_cub_root

    out = tmp_path / "restored"
    main, argv = _argv("restoration.restore", roots, out, "--format", "jpeg", "--quality", "500")
    _error_line(capsys, _call(main, argv), "--quality must be an integer in 1..100, got 500")
    with pytest.raises(ValueError, match="1..100"):
        restore_cub_root(roots["ckpt"], roots["good"], out, fmt="jpeg", quality=500, progress=False)
    main, argv = _argv("restoration.restore", roots, out)
    argv = [a.replace(str(roots["good"]), str(roots["bad_test"])) for a in argv]
    _error_line(capsys, _call(main, argv), f"cannot decode image {roots['bad_test_image']}")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ 9. Ctrl-C
def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def work():
        raise KeyboardInterrupt

    assert run_cli(work) == 130
    assert capsys.readouterr().err == "interrupted; rerun the same command to resume\n" == INTERRUPTED + "\n"


def test_ctrl_c_in_a_terminal_stops_degrade_and_its_workers_in_one_line(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: no worker prints a traceback, the
    parent says one line, exits 130, and no worker outlives it."""
    (tmp_path / "slow_corr.py").write_text(
        "import time\n\ndef slow(image, severity, rng):\n    time.sleep(0.2)\n    return image.copy()\n")
    root = tmp_path / "cub"
    generate_mini_cub(root, n_classes=2, per_class=8)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "corruptions.degrade", "--cub-root", str(root), "--out", str(out),
           "--corruptions", "slow_corr:slow", "--severities", "1,2", "--workers", "2", "--no-progress"]
    # a terminal's child starts with SIGINT at its default; a background job of a non-interactive shell
    # (`make test &`, nohup) inherits it ignored, and Ctrl-C could not reach it at all: start from the default
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not list(out.rglob("images/*/*.jpg")):
            time.sleep(0.05)
        assert proc.poll() is None, "the build ended before it could be interrupted"
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    time.sleep(0.5)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_degrade_workers_leave_ctrl_c_to_the_parent():
    """A pool worker ignores SIGINT (`runkit.process.ignore_sigint` in `init_worker`): an idle worker would
    otherwise die of KeyboardInterrupt in its queue read and print a traceback of its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from corruptions.degrade.worker import init_worker

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN


# ---------------------------------------------------------------------------------- 10. orphaned DataLoader workers
_LOADER_SCRIPT = """
import os, sys, time, torch
from classifiers.predict import make_loader

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 100
    def __getitem__(self, i):
        if i >= 2:
            time.sleep(60)  # a long decode: torch's own watchdog looks only between items
        return torch.zeros(1), 0, i

for i, _ in enumerate(make_loader(Slow(), 1, 2, torch.device("cpu"))):
    print("iterating", flush=True)
"""


def test_dataloader_workers_die_with_a_killed_parent(tmp_path):
    """kill -9 of a process iterating `classifiers.predict.make_loader` (fine-tuning's and scoring's loader)
    while its workers are inside a long ``__getitem__``: they end within 1.5 s (torch's own watchdog would
    notice only after the item, here a minute; the issue saw 7 s)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _LOADER_SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    workers: list[psutil.Process] = []
    try:
        assert proc.stdout.readline().strip() == "iterating"
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 1.5
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.05)
        assert not alive, f"{len(alive)} DataLoader worker(s) outlived the killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:
            if p.is_running():
                p.kill()


def test_the_worker_init_keeps_the_loaders_random_draws(tmp_path):
    """`runkit.process.loader_worker_init` draws nothing: the workers' augmentations are what they were."""
    from classifiers.predict import make_loader

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.rand(2), 0, i

    def batches(loader):
        return torch.cat([x for x, _, _ in loader])

    ours = batches(make_loader(Draws(), 2, 2, torch.device("cpu"), generator=torch.Generator().manual_seed(3)))
    plain = batches(torch.utils.data.DataLoader(Draws(), batch_size=2, num_workers=2,
                                                generator=torch.Generator().manual_seed(3)))
    assert torch.equal(ours, plain)


def test_every_training_loader_kills_its_workers_with_the_parent():
    import inspect

    import diffloss.prior.train.loop as prior_loop
    import restoration.train.loop as train_loop

    for module in (train_loop, prior_loop):
        assert "worker_init_fn=loader_worker_init()" in inspect.getsource(module._loader), module.__name__


# ------------------------------------------------------------------------------------------ 11. contradictory flags
@pytest.mark.parametrize("extra, flag", [
    (["--init-optimizer"], "--init-optimizer"),
    (["--prior", "garbage.pt"], "--prior"),
    (["--prior-config", "tiny"], "--prior-config"),
    (["--gamma", "0.5"], "--gamma"),
    (["--lam", "0.5"], "--lam"),
    (["--target", "x0"], "--target"),
    (["--autocast", "bf16"], "--autocast"),
    (["--diffloss-fit", "crop"], "--diffloss-fit"),
])
def test_flags_that_would_be_ignored_are_refused(extra, flag, roots, tmp_path, capsys):
    main, argv = _argv("restoration.train", roots, tmp_path / "run", *extra)
    _error_line(capsys, _call(main, argv), flag)
    assert not (tmp_path / "run").exists()


def test_a_replayed_run_without_diffloss_is_not_refused_for_its_own_settings(roots, tmp_path, capsys):
    """A run made from Python with DiffLoss off and non-default DiffLoss settings (as the demo makes them)
    replays with ``--config``: the settings come from the file, not from flags the user typed."""
    from restoration.train import main, train_restoration

    run = train_restoration(out=str(tmp_path / "run"), pairs=f"synthetic:fog:3:{roots['good']}", steps=1, crop=32,
                            batch_size=2, val_images=0, gamma=1.0, lam=1.0, progress=False, plot=False)
    assert main(["--config", str(run / "config.json"), "--steps", "2"]) == 0
    assert json.loads((run / "done.json").read_text())["step"] == 2


# ------------------------------------------------------------------------------------------------ 12. small fixes
def test_preview_given_a_folder_suggests_no_model_file(tmp_path, capsys):
    from corruptions.preview import main

    line = _error_line(capsys, _call(main, ["--out", str(tmp_path)]), str(tmp_path), "is a folder; give a file path")
    assert "model.pt" not in line


def test_no_refusal_speaks_of_overwrite_true():
    """Refusals speak the user's language (``--overwrite``), not a library keyword."""
    said = [f"{p.relative_to(REPO)}" for package in ("runkit", "corruptions", "restoration", "classifiers", "diffloss",
                                                     "cubdata", "analysis")
            for p in (REPO / package).rglob("*.py")
            if "(overwrite=True)" in p.read_text() or "pass overwrite=True" in p.read_text()]
    assert said == []


def test_a_broken_plugin_is_one_line_and_leaves_no_folder(roots, tmp_path, capsys, monkeypatch):
    from corruptions.degrade import main

    out = tmp_path / "out"
    rc = _call(main, ["--cub-root", str(roots["good"]), "--corruptions", "os:system", "--severities", "3",
                      "--out", str(out), "--no-progress"])
    _error_line(capsys, rc, "os:system", "fn(image, severity, rng)")
    assert not out.exists()
    # the right signature but no corruption: found on the first image, before any folder is made
    (tmp_path / "wrong_corr.py").write_text("def floats(image, severity, rng):\n    return image / 255.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        rc = _call(main, ["--cub-root", str(roots["good"]), "--corruptions", "wrong_corr:floats", "--severities", "3",
                          "--out", str(out), "--no-progress"])
    finally:
        sys.modules.pop("wrong_corr", None)
    _error_line(capsys, rc, "corruption wrong_corr:floats severity 3 failed on image", "expected uint8")
    assert not out.exists()
