"""Full-scale timings on one GPU in one command: the DiffLoss step, restoration training, the h-space
study, ResNet50 scoring and prior training, written to ``results.json`` and ``results.md``.

    python benchmarks/full_scale.py --out runs/full-scale                     # GPU (H200): goal at most 8 minutes
    python benchmarks/full_scale.py --device cpu --prior-config tiny --out /tmp/fs  # CPU smoke run: about 30 s

Sections (``--sections``, in this order; each prints a line per finished measurement and rewrites both
result files atomically, so a run stopped at its time limit keeps what it finished):

  diffloss  `diffloss.criterion.DiffLoss` forward + backward into restored images that require grad (the
            criterion's share of a training step), at batch 1 and 4 x fp32/bf16/fp16 autocast x
            batch_branches on/off, plus, at batch 4 bf16, activation checkpointing, channels_last and
            torch.compile each on. images/s, peak GiB and the ratio to one no-grad UNet forward at the same
            batch and dtype. The compile setting runs last of the whole run (its first call compiles for
            minutes), and only when ``--budget-s`` leaves time for it.
  train     `restoration.train.train_restoration`: IAT + DiffLoss, batch 4, crop = prior size, synthetic
            low-light pairs of mini-CUB (padded up to the crop); steps/s (from its log, first step excluded)
            and peak GiB, with the prior's UNet calls in bf16 (``--autocast bf16``).
  hspace    ``python -m analysis.hspace`` (a subprocess: benchmarks never import analysis/) at the paper-mode
            protocol on 2 mini-CUB test images, random ResNet50; its own s/image and wall s/image.
  classify  `classifiers.predict.predict` over a DataLoader of mini-CUB's test split (ResNet50 at 448 px)
            against the bare forward on the same batches prepared on the device: images/s and loop/forward.
  prior     `diffloss.prior.train.train_prior` with ``adm128``: steps/s (first step excluded), peak GiB.

``--prior-config tiny`` (or tiny64) selects the small scale: tiny priors, 3 training steps, resnet-mini at 64 px on
16 images, 6 DDIM steps at 64 px ResNet features, and torch.compile with the ``eager`` backend (the same
dynamo capture without inductor's minutes of code generation), so the test suite runs every code path.
Weights are random (``--prior random``, this benchmark's default: timing does not depend on them) of
``--prior-config`` (default ``adm256-uncond``) unless ``--prior`` names trained ones. Peak memory is
``torch.cuda.max_memory_allocated`` (reset per setting, weights included); on CPU it is reported as null.
Training runs write into a scratch folder (``--scratch``, default a temporary one, deleted at the end);
``--out`` receives only results.json and results.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from runkit.files import atomic_write_text  # noqa: E402
from cubdata import mini_cub_root
from runkit.runtime import torch_threads  # noqa: E402
from diffloss.prior import PriorOptions, PriorSpec, resolve_prior  # noqa: E402
from runkit.cli import ArgumentParser  # noqa: E402
from runkit.options import add_config_arguments  # noqa: E402

GIB = 1024 ** 3
SECTIONS = ("diffloss", "train", "hspace", "classify", "prior")
DTYPES = ("fp32", "bf16", "fp16")
SMALL_CONFIGS = ("tiny", "tiny64")
COMPILE_RESERVE_S = 150  # the compile setting starts only with this much of --budget-s left


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of every section: ``full`` for the GPU run, ``small`` for the CPU smoke run."""

    batches: tuple[int, ...] = (1, 4)
    extras_batch: int = 4
    warmup: int = 1
    repeats: int = 3
    compile_backend: str = "inductor"
    train_steps: int = 50
    train_batch: int = 4
    hspace_images: int = 2
    hspace_flags: tuple[str, ...] = ()  # paper-mode protocol
    classify_arch: str = "resnet50"
    classify_size: int = 448
    classify_images: int = 0  # 0: the whole test split (120 images)
    classify_batch: int = 32
    classify_workers: int = 4
    prior_config: str = "adm128"
    prior_steps: int = 100
    prior_batch: int = 16


SCALES = {
    "full": Scale(),
    "small": Scale(batches=(1, 2), extras_batch=2, repeats=1, compile_backend="eager", train_steps=3,
                   hspace_flags=("--steps", "6", "--feature-size", "64"), classify_arch="resnet-mini", classify_size=64, classify_images=16, classify_batch=8,
                   classify_workers=0, prior_config="tiny", prior_steps=3, prior_batch=2),
}


# --------------------------------------------------------------------------------------------------
# plumbing: clock, timing, results files
# --------------------------------------------------------------------------------------------------
class Run:
    """The results so far, the clock, and the output files (rewritten after every measurement)."""

    def __init__(self, out: Path, setup: dict[str, Any], budget_s: float, t0: float) -> None:
        self.out, self.budget_s, self.t0 = out, budget_s, t0
        self.results: dict[str, Any] = {"setup": setup, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    def section(self, name: str) -> dict[str, Any]:
        return self.results["sections"].setdefault(name, {"status": "running", "rows": [], "notes": []})

    def add(self, name: str, row: dict[str, Any]) -> None:
        self.section(name)["rows"].append(row)
        self.write()

    def write(self) -> None:
        self.results["setup"]["elapsed_s"] = round(self.elapsed(), 2)
        atomic_write_text(self.out / "results.json", json.dumps(self.results, indent=2, allow_nan=False) + "\n")
        atomic_write_text(self.out / "results.md", render_markdown(self.results))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median and first-call seconds of ``fn`` (``warmup`` untimed calls, then ``repeats`` timed ones, each
    synchronised) and the peak GiB allocated during the timed calls (None on CPU)."""
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first = time.perf_counter() - t0 if first is None else first
    _reset_peak(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "first_s": times[0] if first is None else first,
            "peak_gib": _peak_gib(device)}


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def _prior_args(prior: str, config: str | None) -> tuple[PriorSpec, str, str | None]:
    """The prior resolved once, and the ``(--prior, --prior-config)`` that give the sections the same prior (the
    built-in one as its path: the h-space section runs in paper mode)."""
    spec = resolve_prior(prior, config)
    return spec, ("random" if spec.path is None else str(spec.path)), config


# --------------------------------------------------------------------------------------------------
# 1. the DiffLoss step
# --------------------------------------------------------------------------------------------------
class DiffLossBench:
    """One prior and fixed inputs; measures DiffLoss settings against the plain no-grad UNet forward."""

    def __init__(self, run: Run, device: torch.device, scale: Scale, spec: PriorSpec, seed: int):
        from diffloss.prior import load_prior

        self.run, self.device, self.scale, self.seed = run, device, scale, seed
        self.model, self.diffusion = load_prior(spec, device=str(device), init_seed=seed)
        self.size = int(self.model.image_size)
        self.fwd: dict[tuple[int, str], float] = {}
        self.errors: list[str] = []
        sec = run.section("diffloss")
        sec["prior_config"] = spec.config_name
        sec["image_size"] = self.size
        if not sec["notes"]:
            sec["notes"] += [
                (f"{sec['prior_config']} prior at {self.size} px; each call: DiffLoss forward + backward into restored "
                 "images that require grad (no restoration network); the gradient reaching them is checked"),
                ("x UNet fwd: seconds of the call / seconds of one plain no-grad UNet forward at the same batch and "
                 "dtype (eager, contiguous weights, also for the channels_last and compile rows)"),
                "peak GiB: torch.cuda.max_memory_allocated during the timed calls, the prior's weights included"]

    def _inputs(self, batch: int):
        g = torch.Generator().manual_seed(self.seed)
        clean = torch.rand(batch, 3, self.size, self.size, generator=g).to(self.device)
        restored0 = torch.rand(batch, 3, self.size, self.size, generator=g).to(self.device)
        t = torch.randint(0, self.diffusion.num_timesteps, (batch,), generator=g).to(self.device)
        return clean, restored0, t

    def forward(self, batch: int, dtype: str) -> float:
        """Median seconds of one no-grad UNet forward (autocast ``dtype``) on ``batch`` images."""
        from diffloss.criterion import AUTOCAST_DTYPES

        clean, _, t = self._inputs(batch)
        x_t = clean * 2 - 1
        amp = AUTOCAST_DTYPES[dtype]

        def fwd() -> None:
            with torch.no_grad(), (torch.autocast(self.device.type, dtype=amp) if amp else contextlib.nullcontext()):
                self.model(x_t, t)

        m = time_fn(fwd, self.device, self.scale.warmup, self.scale.repeats)
        self.fwd[(batch, dtype)] = m["seconds"]
        self.run.add("diffloss", {
            "kind": "unet_fwd", "batch": batch, "dtype": dtype, "batch_branches": None, "variant": "no-grad forward",
            "seconds": _r(m["seconds"], 5), "images_per_s": _r(batch / m["seconds"], 3), "peak_gib": _r(m["peak_gib"]),
            "ratio": 1.0, "first_s": _r(m["first_s"], 3), "grad_norm": None})
        self.run.say(f"diffloss: UNet forward b{batch} {dtype}: {batch / m['seconds']:.2f} img/s")
        return m["seconds"]

    def step(self, batch: int, dtype: str, batch_branches: bool = True, variant: str = "plain",
             warmup: int | None = None, **speed: Any) -> None:
        """Time DiffLoss forward + backward into the restored images with the options ``speed``."""
        from diffloss.criterion import DiffLoss

        if (batch, dtype) not in self.fwd:
            self.forward(batch, dtype)
        crit = DiffLoss(self.model, self.diffusion, batch_branches=batch_branches, generator=self.seed,
                        autocast=dtype, **speed)
        clean, restored0, _ = self._inputs(batch)
        last: dict[str, torch.Tensor] = {}

        def step() -> None:
            restored = restored0.detach().requires_grad_(True)  # stands in for the restoration network's output
            crit(restored, clean).total.backward()
            last["grad"] = restored.grad

        m = time_fn(step, self.device, self.scale.warmup if warmup is None else warmup, self.scale.repeats)
        grad = last["grad"]
        grad_norm = float(grad.norm()) if grad is not None else 0.0
        if not (math.isfinite(grad_norm) and grad_norm > 0):
            raise RuntimeError(f"DiffLoss gave no usable gradient to the restored images (norm {grad_norm}) "
                               f"at batch {batch}, {dtype}, {variant}")
        ratio = m["seconds"] / self.fwd[(batch, dtype)]
        self.run.add("diffloss", {
            "kind": "diffloss_step", "batch": batch, "dtype": dtype, "batch_branches": batch_branches,
            "variant": variant, "seconds": _r(m["seconds"], 5), "images_per_s": _r(batch / m["seconds"], 3),
            "peak_gib": _r(m["peak_gib"]), "ratio": _r(ratio, 3), "first_s": _r(m["first_s"], 3),
            "grad_norm": float(f"{grad_norm:.4g}")})
        peak = "" if m["peak_gib"] is None else f", {m['peak_gib']:.2f} GiB"
        self.run.say(f"diffloss: b{batch} {dtype} batch_branches={'on' if batch_branches else 'off'} {variant}: "
                     f"{batch / m['seconds']:.2f} img/s{peak}, {ratio:.2f}x forward (first call {m['first_s']:.1f} s)")

    def guarded(self, batch: int, dtype: str, batch_branches: bool = True, variant: str = "plain", **kw: Any) -> None:
        """`step`, with a failure (out of memory, a NaN gradient, ...) recorded as an error row so the
        other settings still run; `check` turns the errors into one exception at the end."""
        try:
            self.step(batch, dtype, batch_branches, variant, **kw)
        except Exception as err:  # noqa: BLE001
            msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            self.errors.append(f"b{batch} {dtype} batch_branches={batch_branches} {variant}: {msg}")
            self.run.add("diffloss", {"kind": "diffloss_step", "batch": batch, "dtype": dtype,
                                      "batch_branches": batch_branches, "variant": variant, "error": msg})
            self.run.say(f"diffloss: b{batch} {dtype} {variant} FAILED: {msg}")
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def check(self) -> None:
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} setting(s) failed: " + "; ".join(self.errors))

    def eager_settings(self) -> None:
        from diffloss.prior import set_activation_checkpointing

        for batch in self.scale.batches:
            for dtype in DTYPES:
                for bb in (True, False):
                    self.guarded(batch, dtype, bb)
        b = self.scale.extras_batch
        self.guarded(b, "bf16", True, "checkpointing", checkpointing=True)
        set_activation_checkpointing(self.model, False)
        self.guarded(b, "bf16", True, "channels_last", channels_last=True)
        self.model.to(memory_format=torch.contiguous_format)

    def compile_setting(self) -> None:
        # compile_prior_ changes the shared prior in place for good: the last use of this model
        backend = self.scale.compile_backend
        self.guarded(self.scale.extras_batch, "bf16", True, f"compile ({backend})", warmup=2,
                     compile=True if backend == "inductor" else {"backend": backend})


# --------------------------------------------------------------------------------------------------
# 2. restoration training, 5. prior training
# --------------------------------------------------------------------------------------------------
def _steady_steps_per_s(seconds: list[float]) -> float:
    """Steps per second from cumulative per-step times, the first (warm-up) step excluded when possible."""
    if len(seconds) >= 2 and seconds[-1] > seconds[0]:
        return (len(seconds) - 1) / (seconds[-1] - seconds[0])
    return len(seconds) / max(seconds[-1], 1e-6)


def bench_train(run: Run, device: torch.device, scale: Scale, prior: str, config: str | None, size: int,
                scratch: Path, seed: int) -> None:
    from restoration.train import TrainConfig, train_restoration
    from runkit.rundir import read_table

    dtype = "bf16"  # the paper's setting on a 24 GB card (--autocast bf16)
    cfg = TrainConfig(out=str(scratch / "train"), pairs="synthetic:lowlight:3", net="iat", diffloss=True, prior=prior,
                      prior_config=config, steps=scale.train_steps, batch_size=scale.train_batch, crop=size, seed=seed,
                      val_images=0, ckpt_every=0, device=str(device), progress=False, plot=False, autocast=dtype)
    _reset_peak(device)
    t0 = time.perf_counter()
    run_dir = train_restoration(cfg)
    wall = time.perf_counter() - t0
    seconds = [r["seconds"] for r in read_table(run_dir / "log.csv")]
    sps = _steady_steps_per_s(seconds)
    peak = _peak_gib(device)
    run.add("train", {"net": "iat", "pairs": cfg.pairs, "batch": cfg.batch_size, "crop": cfg.crop, "dtype": dtype,
                      "steps": len(seconds), "steps_per_s": _r(sps, 4), "images_per_s": _r(sps * cfg.batch_size, 3),
                      "peak_gib": _r(peak), "wall_s": _r(wall, 2)})
    run.say(f"train: IAT + DiffLoss b{cfg.batch_size} crop {cfg.crop}: {sps:.3f} steps/s"
            + ("" if peak is None else f", {peak:.2f} GiB") + f" ({wall:.1f} s with set-up)")


def bench_prior(run: Run, device: torch.device, scale: Scale, scratch: Path, seed: int) -> None:
    from diffloss.prior.train import train_prior
    from runkit.rundir import read_table

    _reset_peak(device)
    t0 = time.perf_counter()
    run_dir = train_prior(out=str(scratch / "prior"), prior_config=scale.prior_config, steps=scale.prior_steps,
                          batch_size=scale.prior_batch, sample_every=0, ckpt_every=0, sample_images=1, sample_steps=2,
                          progress=False, device=str(device), seed=seed)
    wall = time.perf_counter() - t0
    seconds = [r["seconds"] for r in read_table(run_dir / "log.csv")]
    done = json.loads((run_dir / "done.json").read_text())
    sps = _steady_steps_per_s(seconds)
    peak = _peak_gib(device)
    run.section("prior")["notes"].append("fp32 (train_prior has no autocast option); wall_s includes set-up, "
                                         "the final save and one 2-step DDIM sample")
    run.add("prior", {"config": scale.prior_config, "parameters": done["num_parameters"], "batch": scale.prior_batch,
                      "steps": len(seconds), "steps_per_s": _r(sps, 4), "images_per_s": _r(sps * scale.prior_batch, 3),
                      "peak_gib": _r(peak), "wall_s": _r(wall, 2)})
    run.say(f"prior: train_prior {scale.prior_config} b{scale.prior_batch}: {sps:.3f} steps/s"
            + ("" if peak is None else f", {peak:.2f} GiB") + f" ({wall:.1f} s with set-up)")


# --------------------------------------------------------------------------------------------------
# 3. the h-space study (its CLI, as a subprocess)
# --------------------------------------------------------------------------------------------------
def bench_hspace(run: Run, device: torch.device, scale: Scale, prior: str, config: str | None, scratch: Path,
                 mini_root: Path) -> None:
    n = scale.hspace_images
    prior_flags = ["--prior", prior] + (["--prior-config", config] if config is not None else [])
    cmd = [sys.executable, "-m", "analysis.hspace", "--out", str(scratch / "hspace"), *prior_flags,
           "--weights", "none", "--set", f"clean={mini_root}", "--images-per-group", str(n),
           "--device", str(device), "--no-progress", *scale.hspace_flags]
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the study runs in another process on the same GPU
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False,
                          timeout=max(120.0, run.left()))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        tail = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1])
        raise RuntimeError(f"python -m analysis.hspace exited with {proc.returncode}: {tail}")
    m = re.search(r"([0-9.]+) s/image \((\d+) UNet evaluations/image\)", proc.stdout)
    if m is None:
        raise RuntimeError(f"python -m analysis.hspace printed no 's/image' line: {proc.stdout[-300:]!r}")
    spi, evals = float(m.group(1)), int(m.group(2))
    run.section("hspace")["notes"].append(
        "s_per_image: the study's own time per image (start latent + DDIM generations + features); "
        "wall_s_per_image: the whole command's wall time (imports, prior and ResNet50 set-up included) / images. "
        "Command: " + " ".join(cmd[1:]))
    run.add("hspace", {"images": n, "unet_evals_per_image": evals, "s_per_image": _r(spi, 3),
                       "wall_s_per_image": _r(wall / n, 3), "wall_s": _r(wall, 2)})
    run.say(f"hspace: {spi:.2f} s/image ({evals} UNet evaluations/image), {wall / n:.2f} s/image wall")


# --------------------------------------------------------------------------------------------------
# 4. classifier scoring
# --------------------------------------------------------------------------------------------------
def bench_classify(run: Run, device: torch.device, scale: Scale, mini_root: Path, seed: int) -> None:
    from classifiers import build_classifier, default_preprocess, eval_transform
    from classifiers.predict import make_loader, predict
    from cubdata.dataset import CubDataset

    ds = CubDataset(mini_root, "test", transform=eval_transform(default_preprocess(scale.classify_arch, scale.classify_size)))
    if scale.classify_images and scale.classify_images < len(ds):
        ds = torch.utils.data.Subset(ds, range(scale.classify_images))
    n = len(ds)
    with torch.random.fork_rng(devices=[]):  # torchvision's init draws from the global RNG
        torch.manual_seed(seed)
        model = build_classifier(scale.classify_arch, 10, weights="none")
    model = model.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # as analysis.classify scores
    workers = min(scale.classify_workers, os.cpu_count() or 1)
    batches = [x.to(device) for x, _, _ in make_loader(ds, scale.classify_batch, workers, device)]
    if device.type == "cuda":
        batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]

    def forward() -> None:
        with torch.inference_mode():
            for x in batches:
                model(x).argmax(1).cpu()

    def loop() -> None:
        out = predict(model, make_loader(ds, scale.classify_batch, workers, device), device, progress=False)
        if len(out["model"]["pred"]) != n:
            raise RuntimeError(f"the scoring loop returned {len(out['model']['pred'])} predictions for {n} images")

    fwd = time_fn(forward, device, 1, max(2, scale.repeats))
    lp = time_fn(loop, device, 0, max(2, scale.repeats))
    ratio = lp["seconds"] / fwd["seconds"]
    run.add("classify", {"arch": scale.classify_arch, "img_size": scale.classify_size, "images": n,
                         "batch": scale.classify_batch, "workers": workers,
                         "loop_images_per_s": _r(n / lp["seconds"], 2), "forward_images_per_s": _r(n / fwd["seconds"], 2),
                         "ratio": _r(ratio, 3), "peak_gib": _r(lp["peak_gib"])})
    run.say(f"classify: {scale.classify_arch} at {scale.classify_size} px: loop {n / lp['seconds']:.1f} img/s, "
            f"forward {n / fwd['seconds']:.1f} img/s, loop/forward {ratio:.2f}")


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------
COLUMNS = {
    "diffloss": [("batch", "batch"), ("dtype", "dtype"), ("batch_branches", "batch_branches"), ("variant", "setting"),
                 ("images_per_s", "images/s"), ("seconds", "s/call"), ("peak_gib", "peak GiB"),
                 ("ratio", "x UNet fwd"), ("first_s", "first call s")],
    "train": [("net", "net"), ("batch", "batch"), ("crop", "crop"), ("dtype", "dtype"), ("steps", "steps"),
              ("steps_per_s", "steps/s"), ("images_per_s", "images/s"), ("peak_gib", "peak GiB"), ("wall_s", "wall s")],
    "hspace": [("images", "images"), ("unet_evals_per_image", "UNet evals/image"), ("s_per_image", "s/image"),
               ("wall_s_per_image", "wall s/image"), ("wall_s", "wall s")],
    "classify": [("arch", "arch"), ("img_size", "px"), ("images", "images"), ("batch", "batch"), ("workers", "workers"),
                 ("loop_images_per_s", "loop images/s"), ("forward_images_per_s", "forward images/s"),
                 ("ratio", "loop/forward"), ("peak_gib", "peak GiB")],
    "prior": [("config", "config"), ("parameters", "parameters"), ("batch", "batch"), ("steps", "steps"),
              ("steps_per_s", "steps/s"), ("images_per_s", "images/s"), ("peak_gib", "peak GiB"), ("wall_s", "wall s")],
}
TITLES = {"diffloss": "DiffLoss step (forward + backward into the restored images)",
          "train": "Restoration training (train_restoration, IAT + DiffLoss)",
          "hspace": "h-space study (python -m analysis.hspace)", "classify": "Classifier scoring (predict)",
          "prior": "Prior training (train_prior)"}


def _cell(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def render_markdown(results: dict[str, Any]) -> str:
    """results.json as Markdown: the set-up, then one table per section (notes and errors under it)."""
    s = results["setup"]
    lines = ["# Full-scale timings", "",
             (f"{s.get('gpu') or 'CPU'} ({s['device']}), torch {s['torch']}, prior {s['prior']} "
              f"({s['config']}), scale {s['scale']}, {s['elapsed_s']:.0f} s in all."), ""]
    for name, sec in results["sections"].items():
        cols = COLUMNS[name]
        lines += [f"## {name}: {TITLES[name]} [{sec['status']}]", "",
                  "| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |" for r in sec["rows"]]
        lines += [""] + [f"- {n}" for n in sec["notes"]]
        lines += [f"- failed: b{r['batch']} {r['dtype']} {r['variant']}: {r['error']}" for r in sec["rows"] if r.get("error")]
        if sec.get("error"):
            lines.append(f"- error: {sec['error']}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _parse_sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad or [text]}; valid: {','.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in names)  # always in the documented order, each once


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python benchmarks/full_scale.py", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    # timing does not depend on the weights: random ones by default (of adm256-uncond unless --prior-config)
    add_config_arguments(p, PriorOptions, defaults={"prior": "random"})
    p.add_argument("--out", default="runs/full-scale", help="folder for results.json and results.md (new or empty)")
    p.add_argument("--sections", type=_parse_sections, default=",".join(SECTIONS),
                   help="comma-separated sections to run, of " + ",".join(SECTIONS))
    p.add_argument("--scale", choices=("auto", "full", "small"), default="auto",
                   help="sizes of every section; auto: small for a tiny/tiny64 prior, else full")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help=f"time goal in seconds: the torch.compile setting runs only if {COMPILE_RESERVE_S} s of it are left")
    p.add_argument("--scratch", default=None,
                   help="folder for the training runs (none given: a temporary one, deleted at the end)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (none given: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="allow an --out folder that already holds files")
    return p


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the flags (one line for stderr), or None."""
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        return f"--device {args.device!r}: {err}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {args.device} requested but CUDA is not available; use --device cpu"
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.overwrite)):
        return f"--out {out} exists and is not an empty folder; choose another or pass --overwrite"
    if args.scratch and Path(args.scratch).exists() and (not Path(args.scratch).is_dir() or any(Path(args.scratch).iterdir())):
        return f"--scratch {args.scratch} exists and is not an empty folder (the training runs need a fresh one)"
    return None


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()  # the budget counts from here: mini-CUB's generation on a fresh machine included
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = _check_args(args)
    if problem is None:
        try:
            config = args.prior_config or ("adm256-uncond" if args.prior == "random" else None)
            prior = _prior_args(args.prior, config)
            mini_root = mini_cub_root()
        except (FileNotFoundError, ValueError) as err:
            problem = str(err)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with torch_threads(args.threads):
        return _run(args, torch.device(args.device), prior, mini_root, t0)


def _run(args: argparse.Namespace, device: torch.device, prior_args: tuple[PriorSpec, str, str | None],
         mini_root: Path, t0: float) -> int:
    """Every section of ``args.sections``, then the compile setting; 1 when a section failed."""
    spec, prior, prior_config = prior_args
    size = int(spec.kwargs["image_size"])
    out = Path(args.out)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out.mkdir(parents=True, exist_ok=True)
    scale_name = args.scale if args.scale != "auto" else ("small" if spec.config_name in SMALL_CONFIGS else "full")
    scale = SCALES[scale_name]
    setup = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
             "torch": torch.__version__, "config": spec.config_name, "prior": args.prior, "prior_size": size,
             "scale": scale_name, "scale_settings": dataclasses.asdict(scale), "sections": list(args.sections),
             "threads": torch.get_num_threads(), "cudnn_benchmark": device.type == "cuda", "seed": args.seed,
             "budget_s": args.budget_s, "elapsed_s": 0.0}
    run = Run(out, setup, args.budget_s, t0)
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="full-scale-"))
    run.say(f"full-scale benchmark on {setup['gpu'] or device}: sections {','.join(args.sections)}, scale {scale_name}, "
            f"prior {setup['prior']} ({spec.config_name}, {size} px); results in {out}")
    failed = []

    def attempt(name: str, fn: Callable[[], Any], finish: bool = True) -> bool:
        """Run one section (or part of one); a failure is recorded and reported, and the run goes on."""
        sec = run.section(name)
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - one section's failure must not cost the others
            sec.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            failed.append(name)
            print(f"error: section {name} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            run.write()
            return False
        if finish:
            sec["status"] = "done"
        run.write()
        return True

    benches: list[DiffLossBench] = []
    try:
        for name in args.sections:
            if name == "diffloss":
                ok = attempt(name, lambda: benches.append(DiffLossBench(run, device, scale, spec, args.seed)),
                             finish=False)
                if ok and attempt(name, benches[0].eager_settings, finish=False):
                    benches[0].model.to("cpu")  # parked, so it does not count in the other sections' peaks
                    run.section(name)["status"] = "running (compile last)"
                else:
                    benches.clear()
            elif name == "train":
                attempt(name, lambda: bench_train(run, device, scale, prior, prior_config, size, scratch, args.seed))
            elif name == "hspace":
                attempt(name, lambda: bench_hspace(run, device, scale, prior, prior_config, scratch, mini_root))
            elif name == "classify":
                attempt(name, lambda: bench_classify(run, device, scale, mini_root, args.seed))
            elif name == "prior":
                attempt(name, lambda: bench_prior(run, device, scale, scratch, args.seed))
        if benches:
            bench = benches[0]
            if run.left() >= COMPILE_RESERVE_S:
                bench.model.to(device)
                bench.compile_setting()
            else:
                run.section("diffloss")["notes"].append(
                    f"torch.compile skipped: {run.left():.0f} s of the {args.budget_s:.0f} s budget left, "
                    f"{COMPILE_RESERVE_S} s needed (--budget-s)")
                run.say("diffloss: torch.compile skipped (budget)")
            attempt("diffloss", bench.check)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    run.say(f"finished in {run.elapsed():.0f} s; results in {out / 'results.md'}"
            + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
