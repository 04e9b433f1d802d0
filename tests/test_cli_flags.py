"""The command-line tools speak one language: ``--help`` prints the module docstring's example commands as
written, each default once, and the shared option groups under their own headings; ``--batch-size``,
``--device auto``, ``--threads``, ``--loader-workers``, ``--cub-root``, ``--set`` and ``--config`` mean the same in
every CLI, and no old spelling is left. Each test walks every CLI and lists the ones that break the rule."""
from __future__ import annotations

import argparse
import importlib
import os
import re

import pytest

CLIS = ("corruptions.degrade", "corruptions.preview", "restoration.train", "diffloss.prior.train", "restoration.restore",
        "classifiers.finetune", "analysis.classify", "analysis.quality", "analysis.hspace", "analysis.naturalness",
        "analysis.hprobe", "analysis.hspace.calibrate")
# the flags each parser requires, so that parse_args can be called with one flag more
REQUIRED = {
    "restoration.train": ["--out", "run"],
    "diffloss.prior.train": ["--out", "run"],
    "restoration.restore": ["--ckpt", "ckpt.pt", "--cub-root", "degraded", "--out", "restored"],
    "classifiers.finetune": ["--arch", "resnet50", "--cub-root", "cub", "--out", "run"],
    "analysis.quality": ["--set", "restored", "--cub-root", "clean"],
}
# the CLIs that run torch models: each takes --threads (0: torch's choice) and --device (default auto)
TORCH_CLIS = ("restoration.train", "diffloss.prior.train", "restoration.restore", "classifiers.finetune",
              "analysis.classify", "analysis.quality", "analysis.hspace", "analysis.naturalness", "analysis.hprobe",
              "analysis.hspace.calibrate")
# the CLIs that batch images, and the attribute --batch-size fills
BATCH_DEST = {"restoration.train": "batch_size", "diffloss.prior.train": "batch_size", "restoration.restore": "batch_size",
              "classifiers.finetune": "batch_size", "analysis.classify": "batch_size",
              "analysis.hspace": "batch_images", "analysis.naturalness": "batch_size", "analysis.hprobe": "batch_size",
              "analysis.hspace.calibrate": "batch_size"}
#: Spellings of earlier releases, and of concepts that now have one name: none may be an option any more.
RETIRED_FLAGS = ("--batch", "--batch-images", "--bootstrap-seed", "--clean", "--gt", "--pred", "--names", "--in",
                 "--data", "--group", "--resume", "--no-restored")
#: The commands whose input is a CUB root (--cub-root), and those that take labelled sets (--set LABEL=ROOT).
CUB_ROOT_CLIS = ("corruptions.degrade", "restoration.restore", "diffloss.prior.train", "classifiers.finetune",
                 "analysis.classify", "analysis.quality", "analysis.naturalness", "analysis.hprobe")
SET_CLIS = ("analysis.classify", "analysis.quality", "analysis.hspace", "analysis.naturalness", "analysis.hprobe")


def _module(name: str):
    return importlib.import_module(name)


def _parser(name: str) -> argparse.ArgumentParser:
    return _module(name).build_parser()


def _parse(name: str, *argv: str) -> argparse.Namespace:
    return _parser(name).parse_args([*REQUIRED.get(name, []), *argv])


def _option_blocks(help_text: str) -> dict[str, str]:
    """``{first option string or positional name: its whole help entry}`` from a ``format_help()`` text:
    entries start with two spaces then a non-space, continuation lines are indented deeper."""
    starts = [help_text.find(h) for h in ("\npositional arguments:\n", "\noptions:\n")]
    body = help_text[min(s for s in starts if s >= 0):]
    blocks: dict[str, str] = {}
    key = None
    for line in body.splitlines():
        if re.match(r"^  \S", line):
            key = line.split()[0].rstrip(",")
            blocks[key] = line
        elif line.startswith("   ") and key is not None:
            blocks[key] += "\n" + line
        else:
            key = None
    return blocks


def test_help_keeps_the_docstring_examples_verbatim():
    problems = []
    for name in CLIS:
        examples = [line for line in _module(name).__doc__.splitlines() if line.startswith("    python -m")]
        assert examples, f"{name}: its docstring has no example command line"
        help_lines = _parser(name).format_help().splitlines()
        problems += [f"{name}: {line.strip()!r}" for line in examples if line not in help_lines]
    assert not problems, "example lines changed by --help:\n" + "\n".join(problems)


def test_help_shows_each_default_once():
    problems = []
    for name in CLIS:
        parser = _parser(name)
        blocks = _option_blocks(parser.format_help())
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            key = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
            block = blocks.get(key)
            assert block is not None, f"{name}: no help entry for {key}"
            count = len(re.findall(r"\bdefault\b", block, flags=re.IGNORECASE))
            if count > 1:
                problems.append(f"{name} {key}: 'default' {count} times: {' '.join(block.split())}")
            switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))  # says what it does
            informative = not switch and action.default not in (None, False, argparse.SUPPRESS) and action.default != []
            if informative and count == 0:
                problems.append(f"{name} {key}: default {action.default!r} not shown: {' '.join(block.split())}")
    assert not problems, "\n".join(problems)


def test_batch_size_is_the_batch_flag():
    problems = [f"{name}: --batch-size 3 does not set {dest}" for name, dest in BATCH_DEST.items()
                if getattr(_parse(name, "--batch-size", "3"), dest) != 3]
    assert not problems, "\n".join(problems)
    assert _parse("restoration.train").batch_size == 4  # the default is set once, by --batch-size
    assert _parse("analysis.hspace").batch_images is None  # None: the config's (or --quick's) default


def test_one_spelling_per_concept_and_the_shared_groups():
    problems = []
    for name in CLIS:
        parser = _parser(name)
        opts = parser._option_string_actions
        problems += [f"{name}: retired flag {f}" for f in RETIRED_FLAGS if f in opts]
        if name in CUB_ROOT_CLIS and "--cub-root" not in opts:
            problems.append(f"{name}: its input root is not --cub-root")
        if name in SET_CLIS and "--set" not in opts:
            problems.append(f"{name}: no --set LABEL=ROOT")
        if "--workers" in opts and name != "corruptions.degrade":
            problems.append(f"{name}: --workers (processes) where DataLoader workers are --loader-workers")
        if "--config" not in opts:
            problems.append(f"{name}: no --config FILE")
        if "run options:" not in parser.format_help():
            problems.append(f"{name}: --help has no 'run options' group")
    assert not problems, "\n".join(problems)


def test_device_defaults_to_auto_and_threads_zero_is_torchs_choice():
    problems = []
    for name in CLIS:
        opts = _parser(name)._option_string_actions
        if "--device" in opts and opts["--device"].default != "auto":
            problems.append(f"{name}: --device defaults to {opts['--device'].default!r}, not 'auto'")
        if name in TORCH_CLIS:
            if "--device" not in opts:
                problems.append(f"{name}: no --device")
            if "--threads" not in opts:
                problems.append(f"{name}: no --threads")
            elif _parse(name, "--threads", "0").threads != 0 or opts["--threads"].default not in (0, None):
                problems.append(f"{name}: --threads 0 (torch's choice) does not parse, or the default is neither "
                                "0 nor None")
    assert not problems, "\n".join(problems)


def test_workers_default_does_not_exceed_the_usable_cpus():
    from runkit.options import default_workers

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 0 <= default_workers() <= min(2, cpus)
    problems = []
    for name in CLIS:
        if name == "corruptions.degrade":  # its workers are processes of its own pool, 1 = this process
            continue
        opts = _parser(name)._option_string_actions
        if "--loader-workers" in opts and opts["--loader-workers"].default > cpus:
            problems.append(f"{name}: --loader-workers defaults to {opts['--loader-workers'].default} on {cpus} CPU(s)")
    assert not problems, "\n".join(problems)


def test_resolve_device_name():
    import torch

    from runkit.cli import resolve_device_name

    assert resolve_device_name("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device_name("cpu") == "cpu" and resolve_device_name("cuda:1") == "cuda:1"


@pytest.mark.parametrize("paths, labels", [
    (["x/fog/3", "x/rain/3"], ["fog/3", "rain/3"]),
    (["runs/restored/wo", "runs/restored/w"], ["wo", "w"]),
    (["a/fog/3", "b/fog/3", "b/rain/3"], ["a/fog/3", "b/fog/3", "rain/3"]),
    (["x/fog/3/", "x/rain/3"], ["fog/3", "rain/3"]),
])
def test_quality_method_labels_are_the_shortest_distinguishing_suffixes(paths, labels):
    from analysis.quality import method_labels

    assert method_labels(paths) == labels


def test_quality_method_labels_of_one_folder_nested_in_anothers_name(tmp_path):
    from analysis.quality import method_labels

    inner, outer = tmp_path / "fog" / "3", tmp_path / "a" / "fog" / "3"
    assert method_labels([inner, outer]) == [str(tmp_path.name) + "/fog/3", "a/fog/3"]
    assert method_labels(["/fog/3", "/a/fog/3"]) == ["/fog/3", "a/fog/3"]
