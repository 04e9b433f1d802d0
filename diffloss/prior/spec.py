"""What ``--prior`` means: one resolver, `resolve_prior`, turns a ``--prior`` value and an optional config into a
`PriorSpec` (which file, which ``create_model_and_diffusion`` kwargs, where they came from), and `PriorOptions`
declares the two flags once for every command that takes a prior.

Every default is decided in `resolve_prior` and nowhere else:

    ``"builtin"``  the trained prior shipped in the package (`BUILTIN_PRIOR_FILE`, its config in the ``.json``
                   beside it); a ``config`` may only repeat its own;
    ``"random"``   untrained weights of ``config`` (default ``tiny``), for tests and timing;
    a file         ``X.safetensors`` with ``X.json`` beside it (what ``python -m diffloss.prior.train`` writes)
                   carries its config, which ``config`` may only repeat; any other file (a guided-diffusion
                   state dict such as ``256x256_diffusion_uncond.pt``, or a ``.safetensors`` without a ``.json``)
                   is read as ``config`` (default ``adm256-uncond``);
    a folder       its ``prior.safetensors`` (a ``diffloss.prior.train`` run), else the config's released file.

Resolving reads at most a small JSON file, never the weights; `diffloss.prior.load_prior` reads them once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from runkit.options import Options, option

from diffloss.prior.configs import PRIOR_CHECKPOINTS, PRIOR_CONFIGS, config_name, prior_kwargs

__all__ = ["PriorSpec", "PriorOptions", "resolve_prior", "PriorCheckpointMismatch", "PRIOR_FORMAT", "PRIOR_WORDS",
           "PRIOR_FILE", "BUILTIN_PRIOR_FILE", "BUILTIN_PRIOR_SHA256", "sidecar_path"]

#: The built-in trained prior, shipped with the package (python -m diffloss.prior.train on mini-CUB's clean
#: train split; the command, seed and step count are in its .json and docs/prior.md). ``--prior builtin``.
BUILTIN_PRIOR_FILE = Path(__file__).resolve().parent / "builtin" / "mini-cub-tiny64.safetensors"
BUILTIN_PRIOR_SHA256 = "1670e0a86ecca35b04907edcac8a465ec6663834dca979767f77c8d993d0c171"
#: The ``--prior`` words every CLI understands besides a path.
PRIOR_WORDS = ("builtin", "random")
#: The weights file of a ``diffloss.prior.train`` run folder (its config in ``prior.json`` beside it).
PRIOR_FILE = "prior.safetensors"
#: ``format`` of the ``.json`` beside a prior's ``.safetensors``: ``{"format", "config_name", "kwargs", "step",
#: "meta", "sha256"}`` and optionally ``"command"`` (``sha256``: of the ``.safetensors`` file's bytes).
PRIOR_FORMAT = "diffloss-prior/2"


class PriorCheckpointMismatch(ValueError):
    """A prior file cannot be read, or its keys, shapes or config do not match the config asked for."""


@dataclass(frozen=True)
class PriorSpec:
    """A resolved prior: everything needed to build it, decided before any weight is read.

    ``path``: the weights file (None: random weights); ``kwargs``: the full ``create_model_and_diffusion``
    arguments; ``config_name``: a `PRIOR_CONFIGS` name or ``"<custom config>"``; ``source``: ``"builtin"``,
    ``"file"`` or ``"random"``; ``step``/``meta``/``sha256``: from a self-describing file's ``.json`` (None/{}
    otherwise; ``sha256`` of the weights file, checked when it is loaded)."""

    path: Path | None
    kwargs: dict[str, Any] = field(hash=False)
    config_name: str
    source: str
    step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    sha256: str | None = None

    @property
    def label(self) -> str:
        """``tiny64 (mini-cub-tiny64.safetensors)``, ``tiny (random weights)``: for titles and logs."""
        return f"{self.config_name} ({self.path.name if self.path is not None else 'random weights'})"


def sidecar_path(weights: str | Path) -> Path:
    """The ``.json`` holding the config of a ``.safetensors`` prior: the same name, suffix ``.json``."""
    return Path(weights).with_suffix(".json")


def _missing_checkpoint_message(path: Path, config: str | Mapping[str, Any]) -> str:
    info = PRIOR_CHECKPOINTS.get(config) if isinstance(config, str) else None
    if info is None:
        info = PRIOR_CHECKPOINTS["adm256-uncond"]
        which = f"no released weights are registered for config {config_name(config)!r}; the paper's prior is"
    else:
        which = f"config {config!r} expects"
    return (
        f"prior checkpoint not found: {str(path)!r}. {which} {info.filename!r} ({info.size}), "
        f"from the openai/guided-diffusion README (https://github.com/openai/guided-diffusion): "
        f"{info.url} . Download it yourself (this toolkit never downloads weights) and pass its path "
        f"with --prior PATH (python -m restoration.train ...) or load_prior(PATH); "
        f"--prior random builds an untrained prior for tests."
    )


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The checked contents of the ``.json`` at ``path`` (one-line PriorCheckpointMismatch when unusable)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PriorCheckpointMismatch(f"{str(path)!r} is not a readable prior config ({type(err).__name__}): "
                                      "expected the JSON python -m diffloss.prior.train writes beside "
                                      f"{PRIOR_FILE}") from None
    if not isinstance(info, dict) or info.get("format") != PRIOR_FORMAT or not isinstance(info.get("kwargs"), dict):
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise PriorCheckpointMismatch(f"{str(path)!r} is not a {PRIOR_FORMAT} prior config (format {found!r}, "
                                      "or no kwargs): expected the JSON python -m diffloss.prior.train writes")
    return info


def _file_spec(weights: Path, config: str | Mapping[str, Any] | None, source: str) -> PriorSpec:
    """The spec of an existing weights file: its ``.json``'s config, else ``config`` (default adm256-uncond)."""
    sidecar = sidecar_path(weights)
    if weights.suffix != ".safetensors" or not sidecar.is_file():
        config = "adm256-uncond" if config is None else config
        return PriorSpec(weights, prior_kwargs(config), config_name(config), source)
    info = _read_sidecar(sidecar)
    kwargs = prior_kwargs(info["kwargs"])
    name = info.get("config_name") or config_name(info["kwargs"])
    if config is not None and prior_kwargs(config) != kwargs:
        raise PriorCheckpointMismatch(
            f"{str(weights)!r} is a {name!r} prior (its config is in {sidecar.name}), but config "
            f"{config_name(config)!r} was asked for; leave the config out (--prior-config) to use the file's")
    return PriorSpec(weights, kwargs, name, source, step=info.get("step"), meta=dict(info.get("meta") or {}),
                     sha256=info.get("sha256"))


def _builtin_spec(config: str | Mapping[str, Any] | None) -> PriorSpec:
    missing = [p for p in (BUILTIN_PRIOR_FILE, sidecar_path(BUILTIN_PRIOR_FILE)) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the built-in prior {str(missing[0])!r} is missing from this installation; train one with "
            "python -m diffloss.prior.train --prior-config tiny64 --out runs/prior-mini64 and pass --prior "
            "runs/prior-mini64, or --prior random for untrained weights (timing only)")
    spec = _file_spec(BUILTIN_PRIOR_FILE, config, "builtin")
    # the .json's digest is checked against the weights when they are read; this pins the .json itself
    if spec.sha256 != BUILTIN_PRIOR_SHA256:
        raise PriorCheckpointMismatch(
            f"the built-in prior's {sidecar_path(BUILTIN_PRIOR_FILE).name} records SHA-256 {spec.sha256}, expected "
            f"{BUILTIN_PRIOR_SHA256} (BUILTIN_PRIOR_SHA256): the installation was modified; reinstall the package")
    return spec


def resolve_prior(prior: str | Path | PriorSpec = "builtin",
                  config: str | Mapping[str, Any] | None = None) -> PriorSpec:
    """A ``--prior`` value (and ``--prior-config``) -> the `PriorSpec` to build; see the module docstring for
    every default. ``config``: a `PRIOR_CONFIGS` name, ``"pkg.module:attr"`` or a dict of
    ``create_model_and_diffusion`` kwargs. A `PriorSpec` is returned as it is (``config`` must be None).

    Raises FileNotFoundError (a missing file: its name, and for the paper's config where to get it),
    PriorCheckpointMismatch (a ValueError: an unreadable ``.json``, or a ``config`` that contradicts the
    file's own), ValueError (an unknown config name)."""
    if isinstance(prior, PriorSpec):
        if config is not None:
            raise ValueError("resolve_prior got a PriorSpec and a config; a PriorSpec is already resolved")
        return prior
    if str(prior) == "builtin":
        return _builtin_spec(config)
    if str(prior) == "random":
        config = "tiny" if config is None else config
        return PriorSpec(None, prior_kwargs(config), config_name(config), "random")
    path = Path(prior).expanduser()
    bare_config = "adm256-uncond" if config is None else config  # what a bare state dict is read as
    if path.is_dir():
        released = PRIOR_CHECKPOINTS.get(bare_config) if isinstance(bare_config, str) else None
        for candidate in (PRIOR_FILE, released.filename if released else None):
            if candidate and (path / candidate).is_file():
                return _file_spec(path / candidate, config, "file")
    if not path.is_file():
        raise FileNotFoundError(_missing_checkpoint_message(path, bare_config))
    return _file_spec(path, config, "file")


@dataclass(kw_only=True)
class PriorOptions(Options):
    """``--prior`` and ``--prior-config``, declared once for every command that takes a prior: a command's
    config inherits this group (``class TrainConfig(RunOptions, PriorOptions)``), or a parser adds it with
    ``runkit.options.add_config_arguments(parser, PriorOptions)``."""

    _options_title = "prior"

    prior: str = option("builtin", result=True,
                        help="the prior: 'builtin' (the trained 64 px prior shipped with the toolkit), 'random' "
                             "(untrained weights of --prior-config, for timing only) or a path: a prior.safetensors "
                             "(with its prior.json) or run folder of python -m diffloss.prior.train, or a "
                             "guided-diffusion state dict such as 256x256_diffusion_uncond.pt")
    prior_config: str | None = option(None, choices=sorted(PRIOR_CONFIGS), result=True,
                                      help="prior architecture: of --prior random (tiny if not given) or of a "
                                           "bare guided-diffusion state dict (adm256-uncond if not given); a prior.json "
                                           "beside the weights brings its own")

    def prior_spec(self) -> PriorSpec:
        """`resolve_prior` of these two options."""
        return resolve_prior(self.prior, self.prior_config)
