"""Image-quality metrics of restored images against their ground truth (the paper's Tables 1, 3 and 4).

    python -m analysis.quality --pred restored/wo restored/w --names "w/o DiffLoss,w/ DiffLoss" \\
        --gt ~/.cache/diffloss-toolkit/mini-cub-v1 --metrics psnr,ssim --out out/quality

``--pred`` and ``--gt`` are folders of images or CUB roots (then their ``images/`` folder is used). Images
pair by relative path without extension (a restored ``x.png`` pairs with the original ``x.jpg``); a
predicted image without a ground truth is an error, extra ground-truth images are ignored.

Metrics (torchmetrics implementations; SSIM is torchmetrics' formula with its Gaussian window applied as two
1-D passes, which is 30x faster on CPU and pinned to torchmetrics' values by the tests):
    psnr   dB, data range 1, per image, averaged           (higher is better)
    ssim   Gaussian 11x11, sigma 1.5, per image, averaged    (higher is better)
    lpips  AlexNet (default) / VGG / SqueezeNet LPIPS, per image, averaged  (lower is better)
    fid    FID between the predicted and the ground-truth set, InceptionV3 pool features (lower is better;
           needs the torch-fidelity package)
PSNR/SSIM need no weights. LPIPS needs the ImageNet backbone (``--lpips-weights PATH`` or torchvision's
file in the torch hub cache, e.g. ``alexnet-owt-7be5be79.pth``; its linear heads ship with torchmetrics);
FID needs ``weights-inception-2015-12-05-6726825d.pth`` (``--fid-weights PATH`` or the hub cache). Nothing
is ever downloaded: a missing file raises FileNotFoundError naming it and where to get it.

Writes ``per_image.csv`` (method, image, metrics), ``summary.csv`` and ``summary.md`` (one row per method).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cubdata import ImageDecodeError, atomic_write_text, load_rgb

log = logging.getLogger(__name__)

__all__ = [
    "METRICS", "HIGHER_IS_BETTER", "psnr", "ssim", "find_images", "match_images", "check_decodable",
    "lpips_backbone_file",
    "load_lpips", "fid_weights_file", "load_fid", "evaluate_quality", "summary_rows", "format_markdown",
    "write_report", "build_parser", "main",
]

METRICS = ("psnr", "ssim", "lpips", "fid")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fid": False}
_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "fid": "FID"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LPIPS_NETS = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
              "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}
FID_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + FID_WEIGHTS


# --------------------------------------------------------------------------------------------------
# functional core
# --------------------------------------------------------------------------------------------------
def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
            raise TypeError(f"{name} must be a [0, 1] NCHW float tensor with 3 channels, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    lo, hi = float(torch.minimum(pred.min(), target.min())), float(torch.maximum(pred.max(), target.max()))
    if lo < 0 or hi > 1:
        raise ValueError(f"images must be in [0, 1], found values in [{lo:.4g}, {hi:.4g}] (uint8 images: x / 255)")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[0, 1] NCHW float`` batches (`diffloss.metrics.psnr`, after the range check)."""
    from diffloss.metrics import psnr as _psnr

    _check_pair(pred, target)
    return _psnr(pred, target)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> list[float]:
    """torchmetrics' 1-D SSIM window (11 taps, sigma 1.5, normalised; `torchmetrics...utils._gaussian`) as floats."""
    dist = torch.arange(start=-5.0, end=6.0, step=1, dtype=dtype, device=device)
    gauss = torch.exp(-torch.pow(dist / 1.5, 2) / 2)
    return (gauss / gauss.sum()).tolist()


def _gaussian_filter_valid(x: torch.Tensor, window: list[float]) -> torch.Tensor:
    """'Valid' 2-D filtering of ``x [..., H+10, W+10]`` with the separable window ``outer(window, window)``
    -> ``[..., H, W]``: 22 multiply-adds per pixel instead of the 121 of torchmetrics' dense depthwise conv2d,
    which on CPU in float64 builds a 121 x H*W im2col buffer per plane (most of its time)."""
    k = len(window)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = x[..., :, 0:w] * window[0]
    for i in range(1, k):
        rows.add_(x[..., :, i:i + w], alpha=window[i])
    out = rows[..., 0:h, :] * window[0]
    for i in range(1, k):
        out.add_(rows[..., i:i + h, :], alpha=window[i])
    return out


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1) of
    ``[0, 1] NCHW float`` batches (H, W >= 6). -> ``[N]``.

    The computation of torchmetrics' ``structural_similarity_index_measure(..., data_range=1.0, reduction="none")``
    in float64 (reflect padding, the same window, the same formula), with the window applied separably; equal to
    torchmetrics' values (tests pin it) and independent of how images are batched."""
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < 6:
        raise ValueError(f"SSIM needs images of at least 6x6 pixels (11x11 window), got {pred.shape[-1]}x{pred.shape[-2]}")
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    p = torch.nn.functional.pad(pred.double(), (5, 5, 5, 5), mode="reflect")
    t = torch.nn.functional.pad(target.double(), (5, 5, 5, 5), mode="reflect")
    mu_p, mu_t, e_pp, e_tt, e_pt = _gaussian_filter_valid(torch.cat((p, t, p * p, t * t, p * t)),
                                                          _gaussian_window(p.dtype, p.device)).split(p.shape[0])
    mu_pp, mu_tt, mu_pt = mu_p.pow(2), mu_t.pow(2), mu_p * mu_t
    sigma_pp = torch.clamp(e_pp - mu_pp, min=0.0)  # variances are non-negative (rounding can make them < 0)
    sigma_tt = torch.clamp(e_tt - mu_tt, min=0.0)
    upper = 2 * (e_pt - mu_pt) + c2
    lower = (sigma_pp + sigma_tt) + c2
    full = ((2 * mu_pt + c1) * upper) / ((mu_pp + mu_tt + c1) * lower)
    return full.reshape(full.shape[0], -1).mean(-1).float()


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------
def find_images(root: str | os.PathLike) -> dict[str, Path]:
    """Image files under ``root`` (under ``root/images`` for a CUB root) keyed by relative path without
    extension (POSIX). Hidden and temporary files are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}; pass an existing folder of images or a CUB root")
    base = root / "images" if (root / "images.txt").is_file() and (root / "images").is_dir() else root
    out: dict[str, Path] = {}
    for p in sorted(base.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            key = p.relative_to(base).with_suffix("").as_posix()
            if key in out:
                raise ValueError(f"{out[key]} and {p} differ only in extension; keep one of them")
            out[key] = p
    return out


def match_images(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """``(key, pred_path, gt_path)`` for every predicted image, paired with the ground truth by relative path
    without extension, else by unique file stem. Raises ValueError naming unmatched predictions."""
    preds, gts = find_images(pred_dir), find_images(gt_dir)
    if not preds:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {pred_dir}")
    by_stem: dict[str, list[str]] = {}
    for k in gts:
        by_stem.setdefault(k.rsplit("/", 1)[-1], []).append(k)
    pairs, missing = [], []
    for key, p in preds.items():
        if key in gts:
            pairs.append((key, p, gts[key]))
            continue
        cands = by_stem.get(key.rsplit("/", 1)[-1], [])
        if len(cands) == 1:
            pairs.append((key, p, gts[cands[0]]))
        else:
            missing.append(key)
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(preds)} predicted image(s) under {pred_dir} have no ground truth under {gt_dir} "
            f"(e.g. {missing[:5]}); images pair by relative path without extension"
        )
    return pairs


def check_decodable(paths) -> None:
    """Open every image's header (cheap: no full decode) so that a file that is not an image fails before any
    metric runs. Raises `cubdata.ImageDecodeError` naming the first such file; truncated files that pass the
    header check still fail, with the same error, when they are decoded."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a broken file
            raise ImageDecodeError(
                f"cannot decode image {path}: {type(err).__name__}: {err}; replace it with a readable image or "
                "remove it"
            ) from None


# --------------------------------------------------------------------------------------------------
# LPIPS and FID (pretrained parts: local files only)
# --------------------------------------------------------------------------------------------------
def _error_kind(err: Exception) -> str:
    """``struct.error``, ``RuntimeError``: the exception's name, qualified when it is not a builtin."""
    cls = type(err)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _read_weights(path: Path, what: str) -> object:
    """``torch.load(weights_only=True)`` of a weights file; a truncated or garbage file becomes one ValueError
    naming it and what was expected (torch's own message would advise the unsafe ``weights_only=False``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, garbage or pickled-object files all land here
        raise ValueError(
            f"{str(path)!r} is not a weights file this toolkit can read ({_error_kind(err)}: truncated, not a "
            f"torch file, or it holds pickled objects, which are never loaded); expected {what}"
        ) from None


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_backbone_file(net: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet backbone of LPIPS ``net`` in the torch hub cache."""
    import torchvision

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; valid: {sorted(LPIPS_NETS)}")
    enum = getattr(torchvision.models, LPIPS_NETS[net][1]).IMAGENET1K_V1
    return _hub_checkpoints() / os.path.basename(enum.url)


def load_lpips(net: str = "alex", weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """torchmetrics' LPIPS module (frozen, eval) with its backbone loaded from ``weights`` (a torchvision
    state dict such as ``alexnet-owt-7be5be79.pth``) or from the torch hub cache; never downloads."""
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; valid: {sorted(LPIPS_NETS)}")
    what = f"torchvision's {LPIPS_NETS[net][0]} ImageNet state dict (pass one with --lpips-weights PATH)"
    # a given file is checked first: a garbage one fails before torchvision and torchmetrics are imported
    state = _read_weights(Path(weights), what) if weights is not None and Path(weights).is_file() else None
    import torchvision
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    expected = lpips_backbone_file(net)
    path = Path(weights) if weights is not None else expected
    if not path.is_file():
        url = getattr(torchvision.models, LPIPS_NETS[net][1]).IMAGENET1K_V1.url
        raise FileNotFoundError(
            f"LPIPS ({net}) needs the ImageNet backbone weights {expected.name}, not found at {path}. We never "
            f"download: fetch {url} on a machine with internet and put it into {expected.parent} (torch hub "
            "cache) or pass --lpips-weights PATH."
        )
    if state is None:
        state = _read_weights(path, f"{expected.name}, {what}")
    model = _NoTrainLpips(pretrained=True, net=net, pnet_rand=True)  # linear heads ship with torchmetrics
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    mapped, slice_of = {}, {}
    for sname, sl in model.net.named_children():
        for idx in sl._modules:
            slice_of[idx] = sname
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "features" and len(parts) >= 3 and parts[1] in slice_of:
            mapped[f"{slice_of[parts[1]]}.{parts[1]}.{'.'.join(parts[2:])}"] = v
    want = model.net.state_dict()
    missing = sorted(set(want) - set(mapped))
    if missing:
        raise ValueError(f"{path} is not a torchvision {LPIPS_NETS[net][0]} state dict: no weights for {missing[:4]}")
    model.net.load_state_dict(mapped)
    return model.eval().requires_grad_(False).to(device)


def fid_weights_file() -> Path:
    """Where torch-fidelity keeps its InceptionV3 weights in the torch hub cache."""
    return _hub_checkpoints() / FID_WEIGHTS


def load_fid(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """torchmetrics' ``FrechetInceptionDistance`` (2048-d pool features) with the InceptionV3 weights from
    ``weights`` or the torch hub cache; never downloads. Needs torch-fidelity."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise ImportError("FID needs the torch-fidelity package: pip install torch-fidelity") from None
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = Path(weights) if weights is not None else fid_weights_file()
    if not path.is_file():
        raise FileNotFoundError(
            f"FID needs the InceptionV3 weights {FID_WEIGHTS}, not found at {path}. We never download: fetch "
            f"{FID_WEIGHTS_URL} on a machine with internet and put it into {fid_weights_file().parent} (torch hub "
            "cache) or pass --fid-weights PATH."
        )
    # torch-fidelity reads the file with weights_only=False (it may run code in a pickle): only a file that loads
    # as plain tensors gets that far
    _read_weights(path, f"torch-fidelity's InceptionV3 state dict {FID_WEIGHTS} (pass one with --fid-weights PATH)")
    return FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(path)).to(device)


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
def _parse_metrics(metrics) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    metrics = tuple(m.lower() for m in metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad or metrics}; valid: {', '.join(METRICS)}")
    return metrics


def _same_size_batches(pairs, batch_size: int):
    """Decode ``(key, pred_path, gt_path)`` pairs in order and yield ``(pairs, pred uint8 NHWC, gt uint8 NHWC)``
    runs of consecutive pairs of one size, at most ``batch_size`` long (order kept, memory bounded)."""
    run, preds, gts = [], [], []
    for pair in pairs:
        _, p_path, g_path = pair
        pred, gt = load_rgb(p_path), load_rgb(g_path)
        if pred.shape != gt.shape:
            raise ValueError(f"{p_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth {g_path} is "
                             f"{gt.shape[1]}x{gt.shape[0]}; restored images must keep the original size")
        if run and (len(run) == batch_size or pred.shape != preds[0].shape):
            yield run, np.stack(preds), np.stack(gts)
            run, preds, gts = [], [], []
        run.append(pair)
        preds.append(pred)
        gts.append(gt)
    if run:
        yield run, np.stack(preds), np.stack(gts)


@torch.no_grad()
def evaluate_quality(pred_dir, gt_dir, metrics=("psnr", "ssim"), device: str = "cpu", lpips_net: str = "alex",
                     lpips_weights=None, fid_weights=None, progress: bool = True, batch_size: int = 8) -> dict:
    """Score the images of ``pred_dir`` against ``gt_dir`` (see `match_images`).

    Returns ``{"per_image": [{"image": key, "psnr": .., ...}], "summary": {"n": N, "psnr": mean, ..., "fid": ..}}``.
    Images are decoded to uint8 and scored as ``[0, 1]`` floats; a size mismatch is an error. Consecutive images
    of one size are scored together, up to ``batch_size`` at a time; the values do not depend on the batching.
    Uses torch's current CPU thread count (the CLI's ``--threads`` sets it once).
    """
    metrics = _parse_metrics(metrics)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = match_images(pred_dir, gt_dir)
    check_decodable(p for _, pred, gt in pairs for p in (pred, gt))
    lp = load_lpips(lpips_net, lpips_weights, device) if "lpips" in metrics else None
    fid = load_fid(fid_weights, device) if "fid" in metrics else None
    if fid is not None and len(pairs) < 2:
        raise ValueError(f"FID needs at least 2 images per set, found {len(pairs)}")
    rows = []
    with tqdm(total=len(pairs), desc=f"quality {Path(pred_dir).name}", disable=not progress) as bar:
        for run, pred, gt in _same_size_batches(pairs, int(batch_size)):
            pu = torch.from_numpy(pred).permute(0, 3, 1, 2).to(device)
            gu = torch.from_numpy(gt).permute(0, 3, 1, 2).to(device)
            pf, gf = pu.float() / 255.0, gu.float() / 255.0
            scores = {}
            if "psnr" in metrics:
                scores["psnr"] = psnr(pf, gf).tolist()
            if "ssim" in metrics:
                scores["ssim"] = ssim(pf, gf).tolist()
            if lp is not None:
                try:
                    scores["lpips"] = lp(pf, gf, normalize=True).reshape(-1).tolist()
                except RuntimeError as err:  # e.g. an image smaller than the backbone's receptive field
                    raise ValueError(f"LPIPS ({lpips_net}) failed on {run[0][1]} ({pred.shape[2]}x{pred.shape[1]}): "
                                     f"{err}") from err
            if fid is not None:
                fid.update(pu, real=False)
                fid.update(gu, real=True)
            for i, (key, _, _) in enumerate(run):
                rows.append({"image": key, **{m: v[i] for m, v in scores.items()}})
            bar.update(len(run))
    summary: dict = {"n": len(rows)}
    for m in metrics:
        if m == "fid":
            summary["fid"] = float(fid.compute())
        else:
            vals = np.array([r[m] for r in rows], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            if len(finite) < len(vals):
                log.warning("%s: %d identical image pair(s) have infinite PSNR; averaged over the finite ones",
                            pred_dir, len(vals) - len(finite))
            summary[m] = float(finite.mean()) if len(finite) else float("inf")
    return {"per_image": rows, "summary": summary, "metrics": list(metrics), "pred": str(pred_dir), "gt": str(gt_dir)}


def summary_rows(results: dict[str, dict]) -> list[dict]:
    """One dict per method: ``{"method", "n", <metric>: value}`` from ``{method: evaluate_quality(...)}``."""
    return [{"method": name, **res["summary"]} for name, res in results.items()]


def _fmt(m: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if m in ("ssim", "lpips") else f"{v:.2f}"


def format_markdown(rows: list[dict], metrics) -> str:
    """A Markdown table (methods x metrics, arrows for the better direction, best value in bold)."""
    metrics = _parse_metrics(metrics)
    head = "| method | n | " + " | ".join(f"{_LABELS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(metrics)]
    best = {}
    for m in metrics:
        vals = [r.get(m) for r in rows if r.get(m) is not None and math.isfinite(r.get(m))]
        if len(vals) > 1:
            best[m] = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
    for r in rows:
        cells = [(f"**{_fmt(m, r.get(m))}**" if m in best and r.get(m) == best[m] else _fmt(m, r.get(m))) for m in metrics]
        lines.append(f"| {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``per_image.csv``, ``summary.csv`` and ``summary.md`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    metrics = next(iter(results.values()))["metrics"] if results else []
    per_fields = ["method", "image"] + [m for m in metrics if m != "fid"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=per_fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for name, res in results.items():
        for r in res["per_image"]:
            w.writerow({"method": name, **r})
    paths = {"per_image": atomic_write_text(out / "per_image.csv", buf.getvalue())}
    rows = summary_rows(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", "n", *metrics], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in ["method", "n", *metrics]})
    paths["summary_csv"] = atomic_write_text(out / "summary.csv", buf.getvalue())
    paths["summary_md"] = atomic_write_text(out / "summary.md", format_markdown(rows, metrics))
    return paths


def method_labels(pred_dirs) -> list[str]:
    """Table labels of the methods' folders: each folder's shortest path suffix that no other folder's path
    ends in, joined with '/' (``x/fog/3``, ``x/rain/3`` -> ``fog/3``, ``rain/3``; ``x/wo``, ``x/w`` -> ``wo``,
    ``w``). Paths are compared as absolute paths; a folder whose every suffix is another's (``/fog/3`` beside
    ``/a/fog/3``) gets its absolute path. The same folder named twice keeps its suffix twice (callers number
    repeats)."""
    paths = [Path(os.path.abspath(p)) for p in pred_dirs]
    parts = [p.parts[1:] if p.anchor else p.parts for p in paths]
    labels = []
    for i, ps in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i and q != ps]
        for k in range(1, len(ps) + 1):
            if all(q[-k:] != ps[-k:] for q in others):
                labels.append("/".join(ps[-k:]))
                break
        else:
            labels.append(str(paths[i]))
    return labels


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from cubdata.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m analysis.quality", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pred", nargs="+", required=True, help="folder(s) / CUB root(s) of restored images, one per method")
    p.add_argument("--names", default=None, help="comma-separated method names for --pred (default: each folder's shortest path suffix that tells it from "
                        "the others: fog/3 and rain/3 for x/fog/3 and x/rain/3, else the folder name)")
    p.add_argument("--gt", required=True, help="folder / CUB root of the ground-truth (clean) images")
    p.add_argument("--metrics", default="psnr,ssim", help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--out", default="out/quality", help="output folder for per_image.csv, summary.csv, summary.md")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--batch-size", type=int, default=8, help="images of one size scored together (memory: about "
                   "0.2 GB per 500x375 image for SSIM)")
    p.add_argument("--lpips-net", choices=sorted(LPIPS_NETS), default="alex", help="LPIPS backbone")
    p.add_argument("--lpips-weights", default=None, help="torchvision backbone state dict for LPIPS (default: hub cache)")
    p.add_argument("--fid-weights", default=None, help=f"{FID_WEIGHTS} for FID (default: hub cache)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv=None) -> int:
    from cubdata.cli import resolve_device_name

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        metrics = _parse_metrics(args.metrics)
        names = [n.strip() for n in args.names.split(",")] if args.names else method_labels(args.pred)
        if len(names) != len(args.pred):
            raise ValueError(f"--names gives {len(names)} name(s) for {len(args.pred)} --pred folder(s)")
        if len(set(names)) != len(names):
            names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
        for pred in args.pred:  # every folder is paired and readable before the first one is scored
            check_decodable(p for _, pr, gt in match_images(pred, args.gt) for p in (pr, gt))
        results, device = {}, resolve_device_name(args.device)
        for name, pred in zip(names, args.pred):
            results[name] = evaluate_quality(pred, args.gt, metrics, device=device, lpips_net=args.lpips_net,
                                             lpips_weights=args.lpips_weights, fid_weights=args.fid_weights,
                                             progress=not args.no_progress, batch_size=args.batch_size)
        paths = write_report(results, args.out)
    except (ValueError, FileNotFoundError, ImageDecodeError, ImportError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
    print(format_markdown(summary_rows(results), metrics), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
