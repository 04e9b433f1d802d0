"""The built-in demo (analysis.demo): its shipped weights (digests, recipes, no training when they match), the
collapse flags, the README's and docs' demo numbers against the committed record and against what the current
code computes from the shipped weights, the test split left alone by every training path, and (slow) the whole
demo and a retrained restorer against the shipped ones."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import analysis.demo.classifiers as demo_classifiers_mod
import analysis.demo.restorers as demo_restorers_mod
from analysis.classify import Predictions, SetSpec, Table2Spec, score_table2
from analysis.demo import docs as demo_docs
from analysis.demo.classifiers import DEMO_ARCHS, DEMO_FINETUNE, classifier_recipe, demo_classifiers
from analysis.demo.restorers import (DEMO_SEEDS, DEMO_SETTINGS, RESTORER_LABELS, demo_restorer_replicates,
                                     restorer_recipe, shipped_restorer_name)
from analysis.demo.table2 import DEMO_CORRUPTIONS, DEMO_SEVERITY, _degraded_roots, collapse_note, collapsed_sets
from analysis.demo.weights import WEIGHTS_DIR, read_shipped, recipe_digest, shipped_info, shipped_names, write_shipped

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SHIPPED_RESTORERS = [(c, s, label) for c in ("fog", "rain", "lowlight") for s in DEMO_SEEDS for label in RESTORER_LABELS]


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the demo trained although shipped weights match its recipe")

    monkeypatch.setattr(demo_restorers_mod, "train_restoration", refuse)
    monkeypatch.setattr(demo_classifiers_mod, "finetune", refuse)


# ---------------------------------------------------------------------------------------------- shipped weights
def test_shipped_weights_are_the_current_recipes_with_their_digests():
    expected = {f"classifier-{a}" for a in DEMO_ARCHS} | {shipped_restorer_name(c, DEMO_SEVERITY, s, label)
                                                          for c, s, label in SHIPPED_RESTORERS}
    assert set(shipped_names()) == expected
    size = 0
    for name in shipped_names():
        state, info = read_shipped(name)  # raises when the file's SHA-256 is not the recorded one
        assert info["command"].startswith("python -m analysis.demo.ship") and info["dtype"] == "float16"
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
        size += (WEIGHTS_DIR / f"{name}.safetensors").stat().st_size
    assert size < 8 * 2**20  # a few MB in all
    for arch in DEMO_ARCHS:  # a changed recipe (or prior, or mini-CUB version) without re-shipping fails here
        assert shipped_info(f"classifier-{arch}")["recipe_digest"] == recipe_digest(classifier_recipe(arch, dict(DEMO_FINETUNE)))
    for c, s, label in SHIPPED_RESTORERS:
        info = shipped_info(shipped_restorer_name(c, DEMO_SEVERITY, s, label))
        assert info["recipe_digest"] == recipe_digest(restorer_recipe(c, DEMO_SEVERITY, s, label, DEMO_SETTINGS))
        assert info["steps"] == {"warmup": DEMO_SETTINGS["warmup_steps"], "phase": DEMO_SETTINGS["steps"]}
        assert info["seed"] == s
    assert '"analysis.demo" = ["weights/*"]' in (REPO / "pyproject.toml").read_text()


def test_a_damaged_shipped_file_is_refused(tmp_path):
    name = "classifier-vgg-mini"
    for suffix in (".safetensors", ".json"):
        shutil.copy(WEIGHTS_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    read_shipped(name, tmp_path)
    data = bytearray((tmp_path / f"{name}.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / f"{name}.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        read_shipped(name, tmp_path)
    with pytest.raises(FileNotFoundError, match="analysis.demo.ship"):
        read_shipped("restorer-nope", tmp_path)


def test_write_shipped_round_trips_in_float16(tmp_path):
    state = {"w": torch.tensor([1.0, 1 / 3, 1e-4]), "n": torch.tensor([3])}
    path = write_shipped("x", state, {"kind": "test", "recipe_digest": "abc"}, tmp_path)
    got, info = read_shipped("x", tmp_path)
    assert path.suffix == ".safetensors" and info["kind"] == "test" and info["dtype"] == "float16"
    assert torch.equal(got["w"], state["w"].half().float()) and torch.equal(got["n"], state["n"])


def test_the_demo_uses_the_shipped_weights_without_training(monkeypatch, tmp_path):
    from classifiers import load_classifier
    from restoration.checkpoint import load_checkpoint

    _no_training(monkeypatch)
    ckpts = demo_classifiers(tmp_path / "cls", device="cpu", progress=False)
    model, info = load_classifier(ckpts["vgg-mini"])
    state, _ = read_shipped("classifier-vgg-mini")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert info["complete"] and info["arch"] == "vgg-mini"
    reps = demo_restorer_replicates(("fog",), DEMO_SEVERITY, cache=tmp_path / "rest")
    assert [len(v) for v in reps["fog"].values()] == [len(DEMO_SEEDS)] * 2
    net, _ = load_checkpoint(reps["fog"]["w/ DiffLoss"][1])
    state, _ = read_shipped(shipped_restorer_name("fog", DEMO_SEVERITY, DEMO_SEEDS[1], "w/ DiffLoss"))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    # another recipe is not the shipped one: it trains (here refused)
    with pytest.raises(AssertionError, match="trained"):
        demo_restorer_replicates(("fog",), DEMO_SEVERITY, cache=tmp_path / "rest", settings={"steps": 3})
    with pytest.raises(AssertionError, match="trained"):
        demo_classifiers(tmp_path / "cls", device="cpu", progress=False, retrain=True)


# ---------------------------------------------------------------------------------------------- the test split
def test_the_demo_and_sweep_training_never_read_a_test_image(mini_root_unreadable_test, tmp_path):
    """The sweep and `python -m analysis.demo.ship` train through `demo_restorer_replicates(retrain=True)`:
    warm-up and both arms, each validated on the train split's held-out part, on a root whose test images are
    unreadable."""
    settings = {"cub_root": str(mini_root_unreadable_test), "warmup_steps": 2, "steps": 1, "val_images": 10}
    reps = demo_restorer_replicates(("fog",), DEMO_SEVERITY, (0,), cache=tmp_path, settings=settings, retrain=True)
    run = reps["fog"]["w/ DiffLoss"][0].parent
    assert json.loads((run / "done.json").read_text())["val"]["n"] == 10  # validated, on 10 train-split images
    assert str(mini_root_unreadable_test) in json.loads((run / "config.json").read_text())["settings"]["pairs"]


# ---------------------------------------------------------------------------------------------- collapse flags
def _preds(config, deg, clf, pred, replicate=0):
    n = len(pred)
    return Predictions(config, deg, clf, np.arange(n), np.zeros(n, np.int64), np.asarray(pred), [""] * n, replicate)


def test_collapsed_sets_flags_one_class_over_half_the_predictions():
    preds = [_preds("clean", "clean", "vgg", [0] * 10),  # the clean row is never flagged
             _preds("degraded", "fog", "vgg", [3] * 5 + [1, 2, 4, 5, 6]),  # exactly half: not flagged
             _preds("degraded", "fog", "res", [3] * 6 + [1, 2, 4, 5]),
             _preds("w/ DiffLoss", "fog", "vgg", [7] * 9 + [1], replicate=2)]
    found = collapsed_sets(preds, {i: f"class{i}" for i in range(10)})
    assert [(f["config"], f["classifier"], f["class_name"], f["count"], f["replicate"]) for f in found] == [
        ("degraded", "res", "class3", 6, 0), ("w/ DiffLoss", "vgg", "class7", 9, 2)]
    note = collapse_note(found, {"degraded": 1, "w/ DiffLoss": 3})
    assert "degraded/fog res 6/10 'class3'" in note and "w/ DiffLoss/fog (seed #3) vgg 9/10 'class7'" in note
    assert collapse_note([], {}) is None


# ---------------------------------------------------------------------------------------------- published numbers
def test_readme_and_table2_demo_blocks_equal_what_the_record_renders():
    """README.md and docs/table2.md show exactly what `python -m analysis.demo.docs` renders from the committed
    record of the demo's output (make docs-figures rewrites both)."""
    record = demo_docs.read_record()
    for path, text in demo_docs.rendered_files(record).items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run make docs-figures"
    assert demo_docs.main(["--check"]) == 0


def test_the_record_matches_the_demo_settings():
    record = demo_docs.read_record()
    cells = {(r["config"], r["degradation"], r["classifier"]): r for r in record["rows"]}
    for c in DEMO_CORRUPTIONS:
        for clf in DEMO_ARCHS:
            assert cells[(RESTORER_LABELS[0], c, clf)]["seeds"] == len(DEMO_SEEDS)
            assert cells[(RESTORER_LABELS[1], c, clf)]["seeds"] == len(DEMO_SEEDS)
    assert f"gamma = {DEMO_SETTINGS['gamma']:g}, lambda = {DEMO_SETTINGS['lam']:g}" in " ".join(record["notes"])


def test_record_cells_reproduce_from_the_shipped_weights(mini_root, monkeypatch, tmp_path):
    """What actually catches drift: the degraded fog set and its restoration by the seed-0 w/o DiffLoss restorer,
    scored by the shipped classifiers, give exactly the per-image predictions the record holds (a change in the
    corruptions, the restorer, the nets or the scoring changes them). The whole table: the slow test below."""
    from restoration.restore import restore_cub_root

    _no_training(monkeypatch)
    record = demo_docs.read_record()
    degraded = _degraded_roots(mini_root, tmp_path, False)["fog"]
    ckpt = demo_restorer_replicates(("fog",), DEMO_SEVERITY, (DEMO_SEEDS[0],), cache=tmp_path / "r",
                                    variants=False)["fog"][RESTORER_LABELS[0]][0]
    restore_cub_root(ckpt, degraded, tmp_path / "restored", split="test", progress=False)
    clfs = demo_classifiers(tmp_path / "c", device="cpu", progress=False)
    spec = Table2Spec(str(mini_root), {a: str(p) for a, p in clfs.items()},
                      [SetSpec("degraded", "fog", str(degraded)), SetSpec(RESTORER_LABELS[0], "fog", str(tmp_path / "restored"))])
    preds, _ = score_table2(spec, device="cpu", batch_size=64, workers=0, progress=False)
    assert " ".join(map(str, preds[0].image_id.tolist())) == record["image_ids"]
    for p in preds:
        assert " ".join(map(str, p.pred.tolist())) == record["predictions"][f"{p.config}|{p.degradation}|{p.classifier}|0"], p.key


# ---------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_the_whole_demo_reproduces_the_record(tmp_path, monkeypatch, capsys):
    """`make demo` from an empty cache: inference only from the shipped weights, the committed record again,
    number for number; its wall time is printed (the 3-minute budget: `benchmarks/timings.py`, the README's table)."""
    from analysis.classify import main

    monkeypatch.setenv("DIFFLOSS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    _no_training(monkeypatch)
    t0 = time.perf_counter()
    assert main(["--no-progress"]) == 0
    seconds = time.perf_counter() - t0
    print(f"demo from an empty cache: {seconds:.0f} s (load average {os.getloadavg()}, {os.cpu_count()} CPUs)")
    got, want = demo_docs.record_from_run(tmp_path / "runs" / "demo-table2"), demo_docs.read_record()
    assert got["predictions"] == want["predictions"]
    assert got["rows"] == want["rows"] and got["comparisons"] == want["comparisons"] and got["notes"] == want["notes"]


#: How far a retrained restorer's Top-1 may land from the shipped one's (points, per classifier). The shipped
#: weights were trained on another run of the same recipe (float16-rounded); on another CPU training amplifies
#: float differences, so retrained weights are a new draw of the same recipe, about as far apart as two seeds.
RETRAIN_TOLERANCE_POINTS = 10.0


@pytest.mark.slow
def test_a_retrained_restorer_lands_near_the_shipped_one(mini_root, tmp_path):
    """--retrain's path for one restorer (fog, seed 0, w/o DiffLoss: warm-up + phase from scratch): its Top-1 on
    the fog test set is within `RETRAIN_TOLERANCE_POINTS` of the shipped restorer's (the record's predictions)."""
    from restoration.restore import restore_cub_root

    record = demo_docs.read_record()
    degraded = _degraded_roots(mini_root, tmp_path, False)["fog"]
    ckpt = demo_restorer_replicates(("fog",), DEMO_SEVERITY, (DEMO_SEEDS[0],), cache=tmp_path / "r", variants=False,
                                    retrain=True)["fog"][RESTORER_LABELS[0]][0]
    restore_cub_root(ckpt, degraded, tmp_path / "restored", split="test", progress=False)
    clfs = demo_classifiers(tmp_path / "c", device="cpu", progress=False)
    spec = Table2Spec(str(mini_root), {a: str(p) for a, p in clfs.items()},
                      [SetSpec(RESTORER_LABELS[0], "fog", str(tmp_path / "restored"))])
    preds, _ = score_table2(spec, device="cpu", batch_size=64, workers=0, progress=False)
    for p in preds[len(DEMO_ARCHS):]:
        shipped = np.array(record["predictions"][f"{RESTORER_LABELS[0]}|fog|{p.classifier}|0"].split(), np.int64)
        assert abs(100 * p.correct.mean() - 100 * (shipped == p.label).mean()) <= RETRAIN_TOLERANCE_POINTS, p.classifier


# ---------------------------------------------------------------------------------------------- the gamma/lambda sweep
def _sweep_module():
    import importlib.util

    # benchmarks/ is not a package (nothing may import it): load the script by path
    spec = importlib.util.spec_from_file_location("diffloss_sweep", REPO / "benchmarks" / "diffloss_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(c, seed, g, lam, top1, psnr, diff):
    return {"corruption": c, "seed": seed, "setting": "w/", "gamma": g, "lam": lam, "psnr": psnr,
            "top1_vgg_mini": top1, "top1_resnet_mini": top1, "diff_to_wo_255": diff}


def test_the_sweep_rule_by_hand():
    S = _sweep_module()
    rows = []
    for c in ("fog", "rain"):
        for seed in (0, 1):
            rows += [_row(c, seed, 1.0, 1.0, 60.0, 20.0, 2.0),
                     _row(c, seed, 10.0, 1.0, 70.0, 19.0, 5.0),
                     _row(c, seed, 0.1, 1.0, 80.0, 21.0, 0.4 if c == "rain" else 3.0)]  # best, but rain < 0.5/255
    settings = S.summarize_settings(rows)
    assert [(s["gamma"], s["eligible"]) for s in settings] == [(0.1, False), (1.0, True), (10.0, True)]
    chosen = S.choose_setting(settings)
    assert (chosen["gamma"], chosen["lam"], chosen["top1"]) == (10.0, 1.0, 70.0)
    # at the edge of the grid: its larger gamma and both lambdas are missing, so the grid is extended
    assert S.missing_neighbours(chosen, settings, 10.0) == [(100.0, 1.0), (10.0, 0.1), (10.0, 10.0)]
    tie = S.choose_setting([dict(settings[1], top1=69.95, psnr=25.0), settings[2]])  # within 0.1 points: PSNR decides
    assert tie["gamma"] == 1.0
    assert S.choose_setting([settings[0]]) is None
    assert S.cross([0.1, 1, 10], [0.1, 1, 10]) == [(0.1, 1.0), (1.0, 1.0), (10.0, 1.0), (1.0, 0.1), (1.0, 10.0)]


def test_the_published_sweep_chose_the_demo_weights_and_the_docs_show_it():
    from analysis.demo.docs import replace_block

    S = _sweep_module()
    rows = S.read_rows(S.PUBLISHED_ROWS)
    choice = json.loads(S.PUBLISHED_CHOICE.read_text())
    chosen = S.choose_setting(S.summarize_settings(rows))
    assert (chosen["gamma"], chosen["lam"]) == (DEMO_SETTINGS["gamma"], DEMO_SETTINGS["lam"])
    assert not S.missing_neighbours(chosen, S.summarize_settings(rows), choice["rule"]["step"])  # interior
    assert {r["seed"] for r in rows if r["setting"] == "w/"} == set(DEMO_SEEDS)
    text = S.DOCS.read_text()
    assert replace_block(text, S.docs_block(rows, choice), "", S.DOCS_START, S.DOCS_END) == text


# ---------------------------------------------------------------------------------------------- colour jitter option
def test_color_jitter_is_off_by_default_and_checked(tmp_path):
    from PIL import Image
    from torchvision import transforms as T

    from classifiers.finetune import FinetuneConfig
    from classifiers.preprocess import default_preprocess, train_transform

    pp = default_preprocess("vgg-mini", 32)
    assert not any(isinstance(t, T.ColorJitter) for t in train_transform(pp).transforms)
    jitter = train_transform(pp, (1.0, 1.0), (0.5, 0.5, 0.5, 0.0))
    assert sum(isinstance(t, T.ColorJitter) for t in jitter.transforms) == 1
    img = Image.fromarray(np.full((32, 32, 3), (200, 60, 30), np.uint8))
    torch.manual_seed(0)
    plain = train_transform(pp, (1.0, 1.0))(img)
    outs = [jitter(img) for _ in range(4)]
    assert any(not torch.allclose(o.mean((1, 2)), plain.mean((1, 2)), atol=1e-3) for o in outs)  # colours move
    base = dict(arch="vgg-mini", cub_root=str(tmp_path), out=str(tmp_path / "o"))
    assert FinetuneConfig(**base).color_jitter == (0.0, 0.0, 0.0, 0.0)
    for bad in ((1.0, 0, 0, 0), (0, 0, 0, 0.6), (-0.1, 0, 0, 0)):
        with pytest.raises(ValueError, match="--color-jitter"):
            FinetuneConfig(**base, color_jitter=bad).validate()


def test_the_real_data_commands_the_demo_prints_are_the_readmes():
    """The recipe `make demo` prints at its end is the README's, line for line (it once named a file as
    finetune's --out, which is a run folder)."""
    from analysis.demo.table2 import REAL_DATA_COMMANDS

    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    commands = [line for line in REAL_DATA_COMMANDS.splitlines() if not line.startswith("#")]
    assert len(commands) == 7 and all(line in readme for line in commands), \
        [line for line in commands if line not in readme]
