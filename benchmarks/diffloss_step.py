"""Time and memory of one DiffLoss training step against one plain UNet forward.

    python benchmarks/diffloss_step.py                                  # CPU: tiny prior, batch 8, fp32
    python benchmarks/diffloss_step.py --prior-config adm256-uncond --batch-size 1 --steps 1 --warmup 0  # CPU, full size
    python benchmarks/diffloss_step.py --device cuda                    # GPU: adm256-uncond, batch 4, bf16
    python benchmarks/diffloss_step.py --device cuda --checkpointing torch --channels-last --compile

For each setting it prints the median wall time and peak memory of
  * ``unet fwd``: one inference forward of the prior (no grad) on B images, the unit of cost;
  * ``diffloss``: DiffLoss forward + backward down to the (leaf) restored images, i.e. the criterion's
    share of a training step (the restoration network itself is not included);
and their ratio. The criterion's work is one no-grad forward for the clean images plus one forward and
one input-gradient backward for the restored ones, so the goal is a ratio of at most 3.0.
Memory: ``peak GiB`` is the peak of allocated tensor memory, weights included (CUDA:
``torch.cuda.max_memory_allocated``; CPU: weights + inputs + the peak of the allocations the profiler
records during the first timed run); ``x mem`` compares the memory allocated on top of the weights.
Weights are random (``--prior random``, this benchmark's default) unless ``--prior`` names trained ones: timing
does not depend on them.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from runkit.runtime import torch_threads  # noqa: E402
from diffloss.criterion import AUTOCAST_DTYPES, DiffLoss  # noqa: E402
from diffloss.prior import CHECKPOINT_IMPLS, PriorOptions, load_prior, resolve_prior  # noqa: E402
from runkit.cli import ArgumentParser  # noqa: E402
from runkit.options import add_config_arguments  # noqa: E402
from runkit.runtime import count_parameters

GIB = 1024 ** 3


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ backend logs start/stop lines there)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak_bytes(prof) -> int:
    """Peak bytes of CPU tensors allocated during a profiled run above what was live before: the running
    sum of the allocations and frees the profiler recorded (``profile_memory=True``), in time order."""
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, resident: int) -> dict[str, Any]:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs (warmup 0: the first run is
    timed, e.g. for one slow CPU step); first-run seconds; memory: ``extra_gib`` allocated during ``fn``
    beyond what was live before, ``peak_gib`` the total (CUDA: ``max_memory_allocated``; CPU: ``resident``
    bytes of weights and inputs + extra, from the profiler during the first timed run)."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - t0 if first is None else first
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times, extra = [], 0
    for i in range(repeats):
        profiled = device.type == "cpu" and i == 0
        ctx = profile(activities=[ProfilerActivity.CPU], profile_memory=True) if profiled else contextlib.nullcontext()
        with (_quiet_stderr() if profiled else contextlib.nullcontext()), ctx as prof:
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        if profiled:
            extra = _cpu_peak_bytes(prof)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        extra = peak - base
    else:
        peak = resident + extra
    return {"seconds": statistics.median(times), "min_seconds": min(times),
            "first_seconds": times[0] if first is None else first,
            "peak_gib": peak / GIB, "extra_gib": extra / GIB}


def benchmark_step(
    config: str | None = None,
    device: str = "cpu",
    batch: int = 8,
    size: int | None = None,
    dtype: str = "fp32",
    channels_last: bool = False,
    checkpointing: str = "off",
    compile: bool = False,
    batch_branches: tuple[bool, ...] = (True, False),
    repeats: int = 5,
    warmup: int = 2,
    prior: str = "random",
    seed: int = 0,
) -> dict[str, Any]:
    """Run the measurements; returns a dict (``setup`` and one entry per measured variant)."""
    dev = torch.device(device)
    spec = resolve_prior(prior, config)  # a prior.safetensors brings its own config; config=None: the defaults
    model, diffusion = load_prior(spec, device=dev, init_seed=seed)
    config = spec.config_name
    size = size or model.image_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    amp_dtype = AUTOCAST_DTYPES[dtype]
    autocast = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext
    # The criteria set the speed options on the shared prior (the first one compiles and checkpoints it),
    # so the plain forward below runs the same (compiled, channels_last) UNet.
    crits = {}
    for i, batched in enumerate(batch_branches):
        crits[batched] = DiffLoss(
            model, diffusion, batch_branches=batched, generator=seed, autocast=dtype,
            channels_last=channels_last, checkpointing=False if checkpointing == "off" or i else checkpointing,
            compile=compile and i == 0,
        )

    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, 3, size, size, generator=g).to(dev).contiguous(memory_format=fmt)
    restored0 = torch.rand(batch, 3, size, size, generator=g).to(dev).contiguous(memory_format=fmt)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g).to(dev)
    x_t = (clean * 2 - 1).contiguous(memory_format=fmt)

    resident = sum(p.numel() * p.element_size() for p in model.parameters()) + 2 * clean.numel() * 4

    def unet_forward() -> None:
        with torch.no_grad(), autocast():
            model(x_t, t)

    results: dict[str, Any] = {
        "setup": dict(config=config, device=str(dev), batch=batch, size=size, dtype=dtype,
                      channels_last=channels_last, checkpointing=checkpointing, compile=compile,
                      parameters=count_parameters(model), threads=torch.get_num_threads(),
                      gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None),
        "unet fwd": _measure(unet_forward, dev, warmup, repeats, resident),
    }
    for batched, crit in crits.items():

        def step(crit: DiffLoss = crit) -> None:
            restored = restored0.detach().requires_grad_(True)  # stands in for the network's output
            crit(restored, clean).total.backward()

        results[f"diffloss (batch_branches={batched})"] = _measure(step, dev, warmup, repeats, resident)
    return results


def _fmt_gib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python benchmarks/diffloss_step.py", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to run on")
    # timing does not depend on the weights: random ones by default, of adm256-uncond on CUDA, tiny on CPU
    add_config_arguments(p, PriorOptions, defaults={"prior": "random"})
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: 4 on CUDA, 8 on CPU)")
    p.add_argument("--size", type=int, default=None, help="image size (default: the config's image_size)")
    p.add_argument("--dtype", choices=sorted(AUTOCAST_DTYPES), default=None,
                   help="autocast dtype of the UNet calls, fp32 = no autocast (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for UNet and inputs")
    p.add_argument("--checkpointing", choices=("off",) + CHECKPOINT_IMPLS, default="off",
                   help="activation checkpointing inside the frozen UNet: torch.utils.checkpoint (any "
                        "autocast) or guided-diffusion's own use_checkpoint (fp32 or CUDA autocast only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet's blocks (first run compiles)")
    p.add_argument("--batch-branches", choices=("on", "off", "both"), default="both",
                   help="DiffLoss batch_branches mode(s) to measure")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed runs before timing (0: time the first run, for one slow CPU step)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, images, t and noise")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if cuda:
        torch.backends.cudnn.benchmark = True
    config = args.prior_config or ("adm256-uncond" if cuda and args.prior == "random" else None)
    batch = args.batch_size or (4 if cuda else 8)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.batch_branches]
    with torch_threads(args.threads):
        res = benchmark_step(config=config, device=args.device, batch=batch, size=args.size, dtype=dtype,
                             channels_last=args.channels_last, checkpointing=args.checkpointing,
                             compile=args.compile, batch_branches=modes, repeats=max(1, args.steps),
                             warmup=max(0, args.warmup), prior=args.prior, seed=args.seed)
    s = res["setup"]
    print(f"\nDiffLoss step benchmark: {s['config']} ({s['parameters']:,} params), batch {s['batch']}, "
          f"{s['size']}x{s['size']}, {s['dtype']}, device {s['device']}"
          + (f" ({s['gpu']})" if s["gpu"] else f" ({s['threads']} threads)")
          + f", channels_last={s['channels_last']}, checkpointing={s['checkpointing']}, compile={s['compile']}")
    mem_label = "peak GiB"
    base = res["unet fwd"]
    print(f"{'measurement':34s} {'median s':>10s} {'images/s':>10s} {mem_label:>14s} {'x time':>7s} {'x mem':>7s} {'1st run s':>10s}")
    for name, m in res.items():
        if name == "setup":
            continue
        ratio_t = m["seconds"] / base["seconds"]
        ratio_m = m["extra_gib"] / base["extra_gib"] if base["extra_gib"] > 0 else None
        print(f"{name:34s} {m['seconds']:10.4f} {s['batch'] / m['seconds']:10.2f} {_fmt_gib(m['peak_gib']):>14s} "
              f"{ratio_t:7.2f} {('%.2f' % ratio_m) if ratio_m else 'n/a':>7s} {m['first_seconds']:10.3f}")
    best = min((m["seconds"] for k, m in res.items() if k.startswith("diffloss")), default=None)
    if best is not None:
        verdict = "meets" if best / base["seconds"] <= 3.0 else "misses"
        print(f"best DiffLoss step / UNet forward = {best / base['seconds']:.2f}x ({verdict} the 3.0x goal)")
    if cuda:
        peak = max(m["peak_gib"] for k, m in res.items() if k != "setup")
        print(f"peak allocated {peak:.2f} GiB ({'fits' if peak < 24 * 0.93 else 'does not fit'} a 24 GB card"
              " with the restoration network's share still to add)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
