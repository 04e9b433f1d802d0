"""analysis.classify (Table 2) and analysis.stats: statistics against hand computations, the table formats,
--from-predictions, spec files, bad inputs, the mini benchmark's degraded variants, the embedded demo."""
from __future__ import annotations

import csv
import json
import shutil
from math import comb
from pathlib import Path

import numpy as np
import pytest

import analysis.classify as ac
import analysis.demo.table2 as dt
from analysis.demo.classifiers import DEMO_ARCHS
from analysis.classify import (
    MCNEMAR_COLUMNS,
    TABLE_COLUMNS,
    SetSpec,
    Table2Spec,
    check_same_test_split,
    load_mcnemar,
    load_predictions,
    load_table,
    main,
    parse_set_arg,
    score_table2,
)
from analysis.stats import bootstrap_ci, mcnemar_counts, mcnemar_exact_p, mcnemar_test, top1_with_ci
from cubdata import MINI_VERSION, cache_dir, encode_image, load_rgb, read_cub, write_cub_metadata
from conftest import TINY_CLASSIFIER_SETTINGS




# ---------------------------------------------------------------------------------------------- statistics
def test_bootstrap_ci_hand_cases():
    assert bootstrap_ci(np.ones(7)) == (1.0, 1.0)
    assert bootstrap_ci(np.zeros(7)) == (0.0, 0.0)
    # two values {0, 1}: resample means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4; the 2.5% and 97.5%
    # quantiles of 1000 draws are therefore 0 and 1.
    assert bootstrap_ci([0, 1], n_boot=1000, seed=3) == (0.0, 1.0)
    # a narrower interval: both tails are at the middle value with confidence 0.2 (quantiles 0.4 / 0.6)
    assert bootstrap_ci([0, 1], n_boot=4000, confidence=0.2, seed=3) == (0.5, 0.5)


def test_bootstrap_ci_equals_a_plain_loop_and_is_seeded():
    values = np.random.default_rng(5).random(37)
    rng = np.random.default_rng(11)
    means = [values[rng.integers(0, 37, size=37)].mean() for _ in range(500)]
    expected = tuple(np.quantile(means, [0.025, 0.975]))
    got = bootstrap_ci(values, n_boot=500, seed=11, chunk_elems=37 * 7)  # several chunks
    assert got == pytest.approx(expected, abs=1e-12)
    assert bootstrap_ci(values, n_boot=500, seed=11) == got
    assert bootstrap_ci(values, n_boot=500, seed=12) != got


def test_bootstrap_ci_matches_binomial_theory():
    # 0/1 data: the bootstrap distribution of the mean is Binomial(n, p)/n; n=400, p=0.8 -> sd 0.02
    correct = np.r_[np.ones(320), np.zeros(80)]
    lo, hi = bootstrap_ci(correct, n_boot=4000, seed=0)
    assert lo == pytest.approx(0.8 - 1.96 * 0.02, abs=0.006) and hi == pytest.approx(0.8 + 1.96 * 0.02, abs=0.006)


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(np.ones((2, 2)))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1, 0], confidence=95)


def test_top1_with_ci_in_percent():
    r = top1_with_ci([True, True, True, False], n_boot=200, seed=0)
    assert r["n"] == 4 and r["correct"] == 3 and r["top1"] == 75.0
    assert 0.0 <= r["ci_low"] <= 75.0 <= r["ci_high"] <= 100.0
    with pytest.raises(ValueError, match="0/1"):
        top1_with_ci([0, 2, 1])


def test_mcnemar_exact_hand_cases():
    # b=1, c=5: two-sided exact binomial p = 2 * (C(6,0) + C(6,1)) / 2^6
    assert mcnemar_exact_p(1, 5) == pytest.approx(2 * (comb(6, 0) + comb(6, 1)) / 2**6) == pytest.approx(0.21875)
    assert mcnemar_exact_p(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(0, 0) == 1.0
    # b=2, c=10: 2 * sum_{k<=2} C(12,k) / 2^12
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    a = np.array([1, 1, 0, 0, 1, 0, 1], bool)
    b = np.array([1, 0, 1, 1, 1, 1, 0], bool)
    assert mcnemar_counts(a, b) == (2, 3)
    assert mcnemar_test(a, b) == {"n": 7, "b": 2, "c": 3, "p_value": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="same length"):
        mcnemar_counts(a, b[:3])


# ---------------------------------------------------------------------------------------------- parsing
def test_parse_set_arg():
    # runkit.cli.parse_set's rule: the label ends at the last '=', so a config may hold one
    assert parse_set_arg("w/ DiffLoss gamma=1/fog=/data/x") == SetSpec("w/ DiffLoss gamma=1", "fog", ("/data/x",))
    assert parse_set_arg("degraded/fog=rel/root") == SetSpec("degraded", "fog", "rel/root")
    # commas separate replicates, one root per restorer seed
    assert parse_set_arg("w/ DiffLoss/fog=r/s0, r/s1,r/s2") == SetSpec("w/ DiffLoss", "fog", ("r/s0", "r/s1", "r/s2"))
    for bad in ("degraded=root", "degraded/fog", "/fog=root", "degraded/=root", "degraded/fog=", "d/fog=a,,b"):
        with pytest.raises(ValueError, match="CONFIG/DEGRADATION=ROOT"):
            parse_set_arg(bad)
    with pytest.raises(ValueError, match="lists r/s0 twice"):
        Table2Spec("c", {"a": "b"}, [parse_set_arg("w/ DiffLoss/fog=r/s0,r/s1,r/s0")]).validate()


# ---------------------------------------------------------------------------------------------- fixtures
def _variant(mini_root: Path, dst: Path, fn=None, records=None) -> Path:
    """A test-split copy of mini-CUB; ``fn`` maps uint8 HxWx3 -> uint8 HxWx3 (None: byte-identical copy)."""
    idx = read_cub(mini_root)
    recs = idx.split("test") if records is None else records
    write_cub_metadata(idx, dst, records=recs)
    for r in recs:
        src = idx.image_path(r)
        out = dst / "images" / r.rel_path
        out.parent.mkdir(parents=True, exist_ok=True)
        if fn is None:
            shutil.copyfile(src, out)
        else:
            out.write_bytes(encode_image(fn(load_rgb(src)), "jpeg", 95))
    return dst


def _gray(a: np.ndarray) -> np.ndarray:
    g = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(g[..., None], 3, axis=2).round().astype(np.uint8)


def _half_gray(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.float32) + _gray(a)) / 2).round().astype(np.uint8)


def _dark(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.float32) * 0.15).round().astype(np.uint8)


@pytest.fixture(scope="module")
def variants(mini_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("variants")
    return {
        "gray": _variant(mini_root, base / "gray", _gray),
        "half": _variant(mini_root, base / "half", _half_gray),
        "copy": _variant(mini_root, base / "copy"),
        "dark": _variant(mini_root, base / "dark", _dark),
    }


def _argv(tiny_ckpts, mini_root, variants, out):
    return ["--classifier", f"vgg-mini={tiny_ckpts['vgg-mini']}", "--classifier", f"resnet-mini={tiny_ckpts['resnet-mini']}",
            "--cub-root", str(mini_root),
            "--set", f"degraded/gray={variants['gray']}", "--set", f"w/o DiffLoss/gray={variants['half']}",
            "--set", f"w/ DiffLoss/gray={variants['copy']}", "--set", f"degraded/dark={variants['dark']}",
            "--set", f"w/ DiffLoss/dark={variants['copy']}",
            "--out", str(out), "--loader-workers", "0", "--batch-size", "16", "--no-progress", "--n-boot", "500"]


@pytest.fixture(scope="module")
def table_run(tiny_ckpts, mini_root, variants, tmp_path_factory):
    out = tmp_path_factory.mktemp("table2")
    assert main(_argv(tiny_ckpts, mini_root, variants, out)) == 0
    return out


# ---------------------------------------------------------------------------------------------- the table
def _read_predictions(out: Path) -> dict[tuple[str, str, str], list[dict]]:
    groups = {}
    for f in sorted((out / "predictions").glob("*.csv")):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                groups.setdefault((r["config"], r["degradation"], r["classifier"]), []).append(r)
    return groups


def test_table_csv_is_tidy_and_consistent_with_predictions(table_run):
    with open(table_run / "table.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(TABLE_COLUMNS)
    rows = load_table(table_run)
    assert all(isinstance(r["n"], int) and isinstance(r["top1"], float) for r in rows)
    keys = [(r["config"], r["degradation"], r["classifier"]) for r in rows]
    assert keys[:2] == [("clean", "clean", "vgg-mini"), ("clean", "clean", "resnet-mini")]
    assert len(keys) == 2 * 6 and len(set(keys)) == len(keys)
    preds = _read_predictions(table_run)
    assert set(preds) == set(keys)
    for r in rows:
        p = preds[(r["config"], r["degradation"], r["classifier"])]
        correct = sum(int(x["label"]) == int(x["pred"]) for x in p)
        assert r["n"] == len(p) == 120 and r["correct"] == correct
        assert r["top1"] == pytest.approx(100 * correct / 120, abs=1e-4)
        assert r["ci_low"] <= r["top1"] <= r["ci_high"]


def test_degradations_lower_and_identical_copy_equal(table_run):
    cell = {(r["config"], r["degradation"], r["classifier"]): r for r in load_table(table_run)}
    preds = _read_predictions(table_run)
    for clf in ("vgg-mini", "resnet-mini"):
        clean = cell[("clean", "clean", clf)]["top1"]
        assert cell[("degraded", "gray", clf)]["top1"] < clean - 15
        assert cell[("degraded", "dark", clf)]["top1"] < clean - 15
        # a byte-identical copy of the clean images is scored exactly like the clean set
        same = [x["pred"] for x in preds[("w/ DiffLoss", "gray", clf)]]
        assert same == [x["pred"] for x in preds[("clean", "clean", clf)]]


def test_mcnemar_rows_match_hand_counts(table_run):
    with open(table_run / "mcnemar.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(MCNEMAR_COLUMNS)
    tests = load_mcnemar(table_run)
    pairs = {(t["config_a"], t["config_b"], t["degradation"], t["classifier"]) for t in tests}
    for clf in ("vgg-mini", "resnet-mini"):
        assert ("w/o DiffLoss", "w/ DiffLoss", "gray", clf) in pairs
        assert ("degraded", "w/o DiffLoss", "gray", clf) in pairs and ("degraded", "w/ DiffLoss", "gray", clf) in pairs
        assert ("degraded", "w/ DiffLoss", "dark", clf) in pairs
    assert not any("clean" in (t["config_a"], t["config_b"]) for t in tests)
    preds = _read_predictions(table_run)
    for t in tests:
        a = preds[(t["config_a"], t["degradation"], t["classifier"])]
        b = preds[(t["config_b"], t["degradation"], t["classifier"])]
        ok_a = [x["label"] == x["pred"] for x in a]
        ok_b = [x["label"] == x["pred"] for x in b]
        hand_b = sum(x and not y for x, y in zip(ok_a, ok_b))
        hand_c = sum(y and not x for x, y in zip(ok_a, ok_b))
        assert (t["n"], t["b"], t["c"]) == (120, hand_b, hand_c)
        assert t["p_value"] == pytest.approx(mcnemar_exact_p(hand_b, hand_c), rel=1e-5)


def test_markdown_latex_json_formats(table_run):
    md = (table_run / "table.md").read_text()
    lines = md.splitlines()
    assert lines[0] == ("| config | gray · vgg-mini | gray · resnet-mini | dark · vgg-mini | dark · resnet-mini |")
    assert [l.split(" | ")[0] for l in lines[2:6]] == ["| clean", "| degraded", "| w/o DiffLoss", "| w/ DiffLoss"]
    assert "–" in lines[4]  # no w/o DiffLoss set for "dark"
    rows = load_table(table_run)
    c = next(r for r in rows if r["config"] == "degraded" and r["degradation"] == "gray" and r["classifier"] == "vgg-mini")
    assert f"{c['top1']:.1f} [{c['ci_low']:.1f}, {c['ci_high']:.1f}]" in lines[3]
    assert "McNemar" in md and "500 resamples" in md
    tex = (table_run / "table.tex").read_text()
    assert r"\begin{tabular}{l|cc|cc}" in tex and r"\multicolumn{2}{c}{gray}" in tex and r"\bottomrule" in tex
    assert r"w/o DiffLoss & " in tex and r"{\scriptsize[" in tex
    doc = json.loads((table_run / "table.json").read_text())
    assert doc["columns"] == list(TABLE_COLUMNS) and doc["meta"]["n_boot"] == 500
    assert [r["config"] for r in doc["rows"]] == [r["config"] for r in rows]
    assert [r["top1"] for r in doc["rows"]] == pytest.approx([r["top1"] for r in rows], abs=1e-4)
    assert set(doc["meta"]["classifiers"]) == {"vgg-mini", "resnet-mini"}


def test_from_predictions_remakes_identical_tables(table_run, tmp_path, capsys):
    shutil.copytree(table_run / "predictions", tmp_path / "src" / "predictions")
    assert main(["--from-predictions", str(tmp_path / "src"), "--out", str(tmp_path / "again"), "--n-boot", "500"]) == 0
    assert "| config |" in capsys.readouterr().out
    for name in ("table.csv", "mcnemar.csv", "table.md", "table.tex", "table.json"):
        assert (tmp_path / "again" / name).read_bytes() == (table_run / name).read_bytes(), name
    # in place (no --out): writes next to the predictions
    assert main(["--from-predictions", str(tmp_path / "src"), "--n-boot", "500"]) == 0
    assert (tmp_path / "src" / "table.csv").read_bytes() == (table_run / "table.csv").read_bytes()
    # without the manifest the CSVs alone are enough (order: clean first, then file order)
    (tmp_path / "src" / "predictions" / "manifest.json").unlink()
    preds, _ = load_predictions(tmp_path / "src")
    assert preds[0].config == "clean" and len(preds) == 12


def test_spec_file_yaml_and_json(tiny_ckpts, mini_root, variants, tmp_path):
    import yaml

    spec = {"cub_root": str(mini_root),
            "classifiers": {"vgg-mini": str(tiny_ckpts["vgg-mini"])},
            "sets": {"degraded": {"gray": str(variants["gray"])}, "w/ DiffLoss/gray": str(variants["copy"])}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    common = ["--loader-workers", "0", "--no-progress", "--n-boot", "200"]
    assert main(["--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "y")] + common) == 0
    assert main(["--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "j")] + common) == 0
    assert (tmp_path / "y" / "table.csv").read_bytes() == (tmp_path / "j" / "table.csv").read_bytes()
    rows = load_table(tmp_path / "y")
    assert [(r["config"], r["degradation"]) for r in rows] == [("clean", "clean"), ("degraded", "gray"), ("w/ DiffLoss", "gray")]
    (tmp_path / "bad.yaml").write_text("cub_root: x\nclasifiers: {}\n")
    assert main(["--spec", str(tmp_path / "bad.yaml")]) == 2


def test_set_not_matching_clean_test_split(tiny_ckpts, mini_root, tmp_path, capsys):
    idx = read_cub(mini_root)
    fewer = _variant(mini_root, tmp_path / "fewer", records=idx.split("test")[:-1])
    with pytest.raises(ValueError) as e:
        check_same_test_split(idx, read_cub(fewer), what="set 'degraded/x'")
    missing_id = idx.split("test")[-1].image_id
    assert "1 clean test image(s) missing" in str(e.value) and str(missing_id) in str(e.value)
    # the whole training split instead of the test split
    other = _variant(mini_root, tmp_path / "train-split", records=idx.split("train"))
    with pytest.raises(ValueError, match="does not match the clean test split"):
        check_same_test_split(idx, read_cub(other))
    # same ids, another image under one of them
    renamed = _variant(mini_root, tmp_path / "renamed")
    first = idx.split("test")[0]
    new_rel = first.rel_path.rsplit("/", 1)[0] + "/someone_else.jpg"
    (renamed / "images" / first.rel_path).rename(renamed / "images" / new_rel)
    text = (renamed / "images.txt").read_text().replace(first.rel_path, new_rel)
    (renamed / "images.txt").write_text(text)
    argv = ["--classifier", f"vgg-mini={tiny_ckpts['vgg-mini']}", "--cub-root", str(mini_root),
            "--set", f"degraded/x={renamed}", "--out", str(tmp_path / "o"), "--loader-workers", "0", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another file name" in err and f"id {first.image_id}" in err and "degraded/x" in err
    assert "someone_else" in err and not (tmp_path / "o").exists()


def test_bad_classifier_inputs(tiny_ckpts, mini_root, tmp_path, capsys):
    base = ["--cub-root", str(mini_root), "--out", str(tmp_path / "o"), "--loader-workers", "0", "--no-progress"]
    # a checkpoint of the wrong architecture under an architecture's name
    assert main(["--classifier", f"vgg-mini={tiny_ckpts['resnet-mini']}"] + base) == 2
    assert "holds a 'resnet-mini' classifier, but 'vgg-mini' was expected" in capsys.readouterr().err
    assert main(["--classifier", f"resnet50={tmp_path / 'missing.pt'}"] + base) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["--set", "degraded/fog=x", "--cub-root", str(mini_root)]) == 2
    assert "--classifier" in capsys.readouterr().err
    with pytest.raises(ValueError, match="reserved"):
        Table2Spec(str(mini_root), {"a": "b"}, [SetSpec("clean", "fog", "x")]).validate()
    with pytest.raises(ValueError, match="twice"):
        Table2Spec(str(mini_root), {"a": "b"}, [SetSpec("d", "fog", "x"), SetSpec("d", "fog", "y")]).validate()


def test_bbox_crop(tiny_ckpts, mini_root, variants, tmp_path, monkeypatch):
    # the dataset crops each image to its (x, y, w, h) box before the transform
    idx = read_cub(mini_root)
    rec = idx.split("test")[0]
    ds = ac.ScoringDataset([idx.image_path(rec)], [rec.label], [rec.image_id], lambda im: im, [rec.bbox])
    x, y, w, h = rec.bbox
    assert ds[0][0].size == (round(w), round(h)) and ds[0][1:] == (rec.label, rec.image_id)
    # URIE's protocol by default: box -> 256x256 -> centre crop 227, whatever the classifier's own size (48)
    import importlib

    import classifiers

    # patched where protocol_transform looks it up (the module that defines protocol_transform)
    preprocess = importlib.import_module(classifiers.protocol_transform.__module__)
    seen = []
    real = preprocess.eval_transform

    def recording_transform(pp, bbox_crop=False):  # records the sizes, scores at 48 px to stay fast
        seen.append((pp["resize"], pp["img_size"], bbox_crop))
        return real(dict(pp, resize=55, img_size=48), bbox_crop)

    monkeypatch.setattr(preprocess, "eval_transform", recording_transform)
    # the tiny classifiers saw whole images: scoring them on boxes is a protocol mismatch, allowed here on purpose
    spec = Table2Spec(str(mini_root), {"resnet-mini": str(tiny_ckpts["resnet-mini"])},
                      [SetSpec("degraded", "gray", str(variants["gray"]))], bbox_crop=True,
                      allow_protocol_mismatch=True)
    assert spec.bbox_size == ac.URIE_BBOX_SIZE == (256, 227)
    preds, meta = score_table2(spec, device="cpu", batch_size=16, workers=0, progress=False)
    assert meta["bbox_crop"] is True and meta["bbox_size"] == [256, 227]
    assert [p.config for p in preds] == ["clean", "degraded"] and set(seen) == {(256, 227, True)}
    from PIL import Image

    square = real({**default_pp(48), "resize": 256, "img_size": 227}, bbox_crop=True)
    assert square(Image.new("RGB", (300, 120))).shape == (3, 227, 227)
    seen.clear()
    whole, _ = score_table2(Table2Spec(spec.clean, spec.classifiers), device="cpu", workers=0, progress=False)
    assert len(preds[0].pred) == len(whole[0].pred) == 120 and set(seen) == {(55, 48, False)}
    # 'classifier': the checkpoint's own sizes; the CLI flag, the spec key and the table note
    seen.clear()
    out = tmp_path / "o"
    assert main(["--classifier", f"resnet-mini={tiny_ckpts['resnet-mini']}", "--cub-root", str(mini_root), "--bbox-crop",
                 "--bbox-size", "classifier", "--allow-protocol-mismatch", "--out", str(out), "--loader-workers", "0",
                 "--no-progress", "--n-boot", "50"]) == 0
    assert set(seen) == {(55, 48, True)} and "each classifier's own sizes" in (out / "table.md").read_text()
    assert ac.parse_bbox_size("300, 256") == (300, 256) and ac.parse_bbox_size([256, 227]) == (256, 227)
    for bad in ("256", "227,256", "a,b"):
        with pytest.raises(ValueError, match="RESIZE"):
            ac.parse_bbox_size(bad)
    (tmp_path / "s.yaml").write_text(f"cub_root: {mini_root}\nclassifiers: {{r: {tiny_ckpts['resnet-mini']}}}\n"
                                     "bbox_crop: true\nbbox_size: [300, 256]\n")
    spec2, _ = ac.load_spec(tmp_path / "s.yaml")
    assert spec2.bbox_crop and spec2.bbox_size == (300, 256)


@pytest.fixture(scope="module")
def bbox_ckpt(mini_root, tmp_path_factory):
    """A resnet-mini fine-tuned (1 epoch, 32 px) on mini-CUB's box crops: box -> 36x36 -> centre crop 32."""
    from classifiers.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("bbox-ckpt") / "resnet-mini-bbox.pt"
    finetune(FinetuneConfig(arch="resnet-mini", cub_root=str(mini_root), out=str(out), weights="none", img_size=32,
                            bbox_crop=True, bbox_size=(36, 32), epochs=1, batch_size=16, lr=0.05, loader_workers=0,
                            progress=False, threads=1))
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_protocol_mismatch_refused_both_ways(tiny_ckpts, bbox_ckpt, mini_root, tmp_path, capsys):
    whole = tiny_ckpts["resnet-mini"]
    base = ["--cub-root", str(mini_root), "--out", str(tmp_path / "o"), "--loader-workers", "0", "--no-progress", "--n-boot", "50"]
    # --bbox-crop on a whole-image checkpoint
    assert main(["--classifier", f"resnet-mini={whole}", "--bbox-crop"] + base) == 2
    err = _one_error_line(capsys)
    assert str(whole) in err and "trained on whole images" in err and "box -> 256x256 -> centre crop 227" in err
    assert "drop --bbox-crop" in err and "--allow-protocol-mismatch" in err
    # whole images on a box-trained checkpoint
    assert main(["--classifier", f"resnet-mini={bbox_ckpt}"] + base) == 2
    err = _one_error_line(capsys)
    assert str(bbox_ckpt) in err and "box -> 36x36 -> centre crop 32" in err and "whole images" in err
    assert "--bbox-crop --bbox-size 36,32" in err and "--allow-protocol-mismatch" in err
    # box crops, but at other sizes than it was trained with
    assert main(["--classifier", f"resnet-mini={bbox_ckpt}", "--bbox-crop"] + base) == 2
    err = _one_error_line(capsys)
    assert "box -> 256x256 -> centre crop 227" in err and "--bbox-size 36,32" in err
    assert not (tmp_path / "o").exists()  # refused before anything was scored or written
    # a spec file's bbox_crop is the same request
    (tmp_path / "s.yaml").write_text(f"cub_root: {mini_root}\nclassifiers: {{r: {whole}}}\nbbox_crop: true\n")
    assert main(["--spec", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--loader-workers", "0", "--no-progress"]) == 2
    assert "--allow-protocol-mismatch" in _one_error_line(capsys)


def test_protocol_match_accepted_and_scores_like_finetune(bbox_ckpt, tiny_ckpts, mini_root, tmp_path, capsys):
    from classifiers import load_classifier

    common = ["--cub-root", str(mini_root), "--loader-workers", "0", "--no-progress", "--n-boot", "50"]
    for i, size in enumerate(("36,32", "classifier")):  # the recorded sizes, given or taken from the checkpoint
        out = tmp_path / f"box{i}"
        assert main(["--classifier", f"resnet-mini={bbox_ckpt}", "--bbox-crop", "--bbox-size", size,
                     "--out", str(out)] + common) == 0
        (clean,) = [r for r in load_table(out) if r["config"] == "clean"]
        # the same protocol as fine-tuning's own evaluation: the same accuracy on the same test images
        assert clean["top1"] == pytest.approx(load_classifier(bbox_ckpt)[1]["clean_test_top1"], abs=1e-4)
        doc = json.loads((out / "table.json").read_text())
        assert doc["meta"]["classifiers"]["resnet-mini"]["protocol"] == {"bbox_crop": True, "bbox_size": [36, 32]}
    # whole-image checkpoint, whole-image scoring: accepted as before
    assert main(["--classifier", f"resnet-mini={tiny_ckpts['resnet-mini']}", "--out", str(tmp_path / "w")] + common) == 0
    capsys.readouterr()


def test_allow_protocol_mismatch_downgrades_to_warning(tiny_ckpts, bbox_ckpt, mini_root, tmp_path, caplog, capsys):
    import logging

    common = ["--cub-root", str(mini_root), "--loader-workers", "0", "--no-progress", "--n-boot", "50", "--allow-protocol-mismatch"]
    with caplog.at_level(logging.WARNING, logger="analysis.classify"):
        assert main(["--classifier", f"resnet-mini={tiny_ckpts['resnet-mini']}", "--bbox-crop",
                     "--out", str(tmp_path / "a")] + common) == 0
        assert main(["--classifier", f"resnet-mini={bbox_ckpt}", "--out", str(tmp_path / "b")] + common) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trained on whole images" in w and str(tiny_ckpts["resnet-mini"]) in w for w in warnings), warnings
    assert any("box -> 36x36 -> centre crop 32" in w and str(bbox_ckpt) in w for w in warnings), warnings
    doc = json.loads((tmp_path / "a" / "table.json").read_text())
    assert doc["meta"]["allow_protocol_mismatch"] is True and doc["meta"]["protocol_mismatch"] == ["resnet-mini"]
    assert "allow_protocol_mismatch" in ac.load_spec.__doc__
    capsys.readouterr()


def default_pp(size):
    from classifiers import default_preprocess

    return default_preprocess("resnet-mini", size)


# ---------------------------------------------------------------------------------------------- multiple comparisons, seeds
def _holm_by_hand(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    m, out, running = len(ps), [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def test_mcnemar_holm_column_and_markdown(table_run):
    tests = load_mcnemar(table_run)
    assert len(tests) == 2 * 4 and all(t["p_adjust"] == "holm" for t in tests)  # holm is the default
    raw = [t["p_value"] for t in tests]
    assert [t["p_adjusted"] for t in tests] == pytest.approx(_holm_by_hand(raw), rel=1e-5)
    assert all(t["p_adjusted"] >= t["p_value"] for t in tests)
    md = (table_run / "table.md").read_text()
    assert "| p | p (Holm) |" in md
    assert "Holm-corrected over all 8 McNemar tests of this table" in md and "uncorrected" in md
    doc = json.loads((table_run / "table.json").read_text())
    assert doc["meta"]["p_adjust"] == "holm" and "p_adjusted" in doc["mcnemar"][0]


def test_p_adjust_none_and_bootstrap_seed(table_run, tmp_path, capsys):
    shutil.copytree(table_run / "predictions", tmp_path / "src" / "predictions")
    out = tmp_path / "none"
    assert main(["--from-predictions", str(tmp_path / "src"), "--out", str(out), "--n-boot", "300",
                 "--p-adjust", "none", "--seed", "7"]) == 0
    tests = load_mcnemar(out)
    assert all(t["p_adjusted"] == t["p_value"] and t["p_adjust"] == "none" for t in tests)
    md = (out / "table.md").read_text()
    assert "not corrected for multiple comparisons" in md and "p (Holm)" not in md
    assert "300 resamples, seed 7" in md
    # the seed reaches every cell's bootstrap: the CIs are those of top1_with_ci(..., seed=7)
    preds, _ = load_predictions(tmp_path / "src")
    by_key = {p.key: p for p in preds}
    for r in load_table(out):
        want = top1_with_ci(by_key[(r["config"], r["degradation"], r["classifier"])].correct, n_boot=300, seed=7)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]), abs=1e-4)
    # --seed is the same flag
    assert main(["--from-predictions", str(tmp_path / "src"), "--out", str(tmp_path / "s7"), "--n-boot", "300",
                 "--p-adjust", "none", "--seed", "7"]) == 0
    assert (tmp_path / "s7" / "table.csv").read_bytes() == (out / "table.csv").read_bytes()
    assert main(["--from-predictions", str(tmp_path / "src"), "--out", str(tmp_path / "s8"), "--n-boot", "300",
                 "--seed", "8"]) == 0
    assert (tmp_path / "s8" / "table.csv").read_bytes() != (out / "table.csv").read_bytes()
    capsys.readouterr()


def test_mcnemar_csv_reads_back_and_other_columns_are_refused(tmp_path):
    header = ",".join(MCNEMAR_COLUMNS)
    (tmp_path / "mcnemar.csv").write_text(header + "\ndegraded,w/ DiffLoss,fog,vgg,10,1,5,0.21875,0.4375,holm\n")
    assert load_mcnemar(tmp_path) == [{"config_a": "degraded", "config_b": "w/ DiffLoss", "degradation": "fog",
                                       "classifier": "vgg", "n": 10, "b": 1, "c": 5, "p_value": 0.21875,
                                       "p_adjusted": 0.4375, "p_adjust": "holm"}]
    old = ["config_a", "config_b", "degradation", "classifier", "n", "b", "c", "p_value"]  # no p_adjusted
    (tmp_path / "mcnemar.csv").write_text(",".join(old) + "\ndegraded,w/ DiffLoss,fog,vgg,10,1,5,0.21875\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_mcnemar(tmp_path)


def _forbid_work(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("no work may start before the arguments and --out are checked")

    import analysis.classify.cli as cli
    import analysis.classify.summary as summary

    # every name through which the command line reaches work, where it looks the name up
    for module, name in ((cli, "load_predictions"), (cli, "score_table2"), (cli, "finish_table2"),
                         (summary, "score_table2"), (dt, "main_demo")):
        monkeypatch.setattr(module, name, fail)


@pytest.mark.parametrize("flags, message", [
    (["--n-boot", "0"], "--n-boot must be a positive integer"),
    (["--n-boot", "-5"], "--n-boot must be a positive integer"),
    (["--confidence", "95"], "--confidence must be in (0, 1), got 95; for 95% pass --confidence 0.95"),
    (["--confidence", "0"], "--confidence must be in (0, 1)"),
    (["--confidence", "1"], "--confidence must be in (0, 1)"),
])
@pytest.mark.parametrize("mode", ["score", "from-predictions", "demo"])
def test_bad_bootstrap_arguments_refused_before_work(flags, message, mode, tmp_path, monkeypatch, capsys):
    _forbid_work(monkeypatch)
    base = {"score": ["--classifier", "a=x.pt", "--cub-root", "c"], "from-predictions": ["--from-predictions", "p"],
            "demo": []}[mode]
    assert main(base + flags + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", ["score", "from-predictions", "demo"])
def test_unwritable_out_refused_before_scoring(mode, tmp_path, monkeypatch, capsys):
    _forbid_work(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    base = {"score": ["--classifier", "a=x.pt", "--cub-root", "c"], "from-predictions": ["--from-predictions", "p"],
            "demo": []}[mode]
    for out in (blocker / "table2", blocker):
        assert main(base + ["--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--out {out}" in err[0] and "choose another --out" in err[0], err
    assert blocker.read_text() == "not a folder"


def test_package_names_resolve():
    """analysis.classify gathers the public names of its modules: every name of its __all__ resolves, and
    ScoringDataset is the classifiers' own."""
    from classifiers.scoring_data import ScoringDataset

    assert [n for n in ac.__all__ if not hasattr(ac, n)] == []
    assert ac.ScoringDataset is ScoringDataset
    assert (ac.DEFAULT_OUT, ac.DEMO_OUT) == ("runs/table2", "runs/demo-table2")


def test_scoring_dataset_refuses_lists_of_other_lengths():
    with pytest.raises(ValueError, match="one entry per image; got 2, 1, 2"):
        ac.ScoringDataset([Path("a.jpg"), Path("b.jpg")], [0], [1, 2], lambda im: im)
    with pytest.raises(ValueError, match="got 1, 1, 1, 2"):
        ac.ScoringDataset([Path("a.jpg")], [0], [1], lambda im: im, [(0, 0, 1, 1)] * 2)


def test_check_out_writable_leaves_no_trace(tmp_path):
    ac.check_out_writable(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == []                      # created to test, then removed again
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "x.txt").write_text("x")
    ac.check_out_writable(tmp_path / "kept")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["x.txt"]


# ---------------------------------------------------------------------------------------------- mini benchmark
@pytest.fixture(scope="module")
def demo_degraded(mini_root):
    from corruptions.degrade import build_degraded_cub

    out = cache_dir() / f"demo-degraded-{MINI_VERSION}"  # the demo's own cache folder: built once per session
    build_degraded_cub(mini_root, out, corruptions=dt.DEMO_CORRUPTIONS, severities=(dt.DEMO_SEVERITY,), split="test",
                       progress=False)
    return {c: out / c / str(dt.DEMO_SEVERITY) for c in dt.DEMO_CORRUPTIONS}


def test_mini_degraded_variants_score_below_clean(tiny_ckpts, mini_root, demo_degraded):
    spec = Table2Spec(str(mini_root), {k: str(v) for k, v in tiny_ckpts.items()},
                      [SetSpec("degraded", c, str(root)) for c, root in demo_degraded.items()])
    preds, _ = score_table2(spec, device="cpu", batch_size=32, workers=0, progress=False)
    acc = {p.key: float(p.correct.mean()) for p in preds}
    for clf in tiny_ckpts:
        clean = acc[("clean", "clean", clf)]
        for c in demo_degraded:
            assert acc[("degraded", c, clf)] < clean, (c, clf, acc)


def _fake_restorers(calls, mini_root):
    """Stand-ins for the demo restorers (one per seed): 'w/ DiffLoss' returns the clean images, 'w/o' the degraded."""

    def demo_restorer_replicates(corruptions, severity, seeds, cache=None, retrain=False):
        out = {}
        for c in corruptions:
            d = cache_dir() / "fake-restorers" / c
            d.mkdir(parents=True, exist_ok=True)
            out[c] = {"w/o DiffLoss": [], "w/ DiffLoss": []}
            for s in seeds:
                (d / f"wo{s}.pt").write_bytes(f"wo{s}".encode())
                (d / f"w{s}.pt").write_bytes(f"w{s}".encode())
                out[c]["w/o DiffLoss"].append(d / f"wo{s}.pt")
                out[c]["w/ DiffLoss"].append(d / f"w{s}.pt")
        return out

    def restore_cub_root(ckpt, in_root, out_root, device="cpu", batch_size=8, split="test", progress=True):
        calls.append((Path(ckpt).name, str(in_root)))
        if Path(ckpt).name.startswith("w") and not Path(ckpt).name.startswith("wo"):
            _variant(mini_root, Path(out_root))
        else:
            shutil.copytree(in_root, out_root, dirs_exist_ok=True)
        return {}

    return demo_restorer_replicates, restore_cub_root


def test_embedded_demo_fast(tiny_ckpts, demo_degraded, mini_root, monkeypatch, tmp_path, capsys):
    """`python -m analysis.classify` with no arguments, with the tiny classifier recipe (already cached) and
    stand-in restorers, so it runs in seconds; the full-size demo is test_embedded_demo_full (slow)."""
    import analysis.demo.classifiers as cd

    monkeypatch.setattr(cd, "DEMO_FINETUNE", dict(cd.DEMO_FINETUNE, **TINY_CLASSIFIER_SETTINGS))
    calls = []
    monkeypatch.setattr(dt, "_restorers_available", lambda: (_fake_restorers(calls, mini_root), ""))
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC SMOKE BENCHMARK" in out and "python -m classifiers.finetune --arch resnet50" in out
    assert "read the paired comparisons" in out and "gamma = " in out  # the reader is told which DiffLoss settings and where to look
    rows = load_table(tmp_path / "runs" / "demo-table2")
    configs = {r["config"] for r in rows}
    assert configs == {"clean", "degraded", "w/o DiffLoss", "w/ DiffLoss"}
    assert {r["degradation"] for r in rows} == {"clean", "fog", "rain", "lowlight"}
    assert len(calls) == 18  # 2 rows x 3 corruptions x 3 restorer seeds
    cell = {(r["config"], r["degradation"], r["classifier"]): r["top1"] for r in rows}
    for clf in DEMO_ARCHS:
        for c in dt.DEMO_CORRUPTIONS:
            assert cell[("w/ DiffLoss", c, clf)] == cell[("clean", "clean", clf)]  # the stand-in restores perfectly
            assert cell[("w/o DiffLoss", c, clf)] == cell[("degraded", c, clf)]
    # second run: everything cached (no retraining, no re-restoring)
    calls.clear()
    assert main(["--no-progress", "--out", str(tmp_path / "second")]) == 0
    assert calls == []
    assert (tmp_path / "second" / "table.csv").read_bytes() == (tmp_path / "runs" / "demo-table2" / "table.csv").read_bytes()
    # without restorers: clean + degraded rows only, and the reader is told why
    monkeypatch.setattr(dt, "_restorers_available", lambda: (None, "ImportError: no restoration.restore"))
    assert main(["--no-progress", "--out", str(tmp_path / "third")]) == 0
    out = capsys.readouterr().out
    assert "Restoration rows (w/o / w/ DiffLoss) are absent" in out and "no restoration.restore" in out
    assert {r["config"] for r in load_table(tmp_path / "third")} == {"clean", "degraded"}


@pytest.mark.slow
def test_embedded_demo_full(tmp_path, monkeypatch, capsys):
    """The real `make demo` path: full recipe, real restorers when diffloss provides them."""
    monkeypatch.setenv("DIFFLOSS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress"]) == 0
    rows = load_table(tmp_path / "runs" / "demo-table2")
    cell = {(r["config"], r["degradation"], r["classifier"]): r["top1"] for r in rows}
    for clf in DEMO_ARCHS:
        assert cell[("clean", "clean", clf)] > 80.0
        for c in dt.DEMO_CORRUPTIONS:
            assert cell[("degraded", c, clf)] < cell[("clean", "clean", clf)]


# ---------------------------------------------------------------------------------------------- seed replicates
def _replicated_argv(tiny_ckpts, mini_root, variants, out):
    v = {k: str(p) for k, p in variants.items()}
    return ["--classifier", f"vgg-mini={tiny_ckpts['vgg-mini']}", "--classifier", f"resnet-mini={tiny_ckpts['resnet-mini']}",
            "--cub-root", str(mini_root), "--set", f"degraded/gray={v['gray']}",
            "--set", f"w/o DiffLoss/gray={v['half']},{v['gray']}",           # two "seeds"
            "--set", f"w/ DiffLoss/gray={v['copy']},{v['half']},{v['dark']}",  # three
            "--set", f"degraded/dark={v['dark']}", "--set", f"w/ DiffLoss/dark={v['copy']}",
            "--out", str(out), "--loader-workers", "0", "--batch-size", "32", "--no-progress", "--n-boot", "300"]


@pytest.fixture(scope="module")
def replicated_run(tiny_ckpts, mini_root, variants, tmp_path_factory):
    out = tmp_path_factory.mktemp("table2-replicated")
    assert main(_replicated_argv(tiny_ckpts, mini_root, variants, out)) == 0
    return out


def _runs_by_cell(out: Path) -> dict[tuple[str, str, str], np.ndarray]:
    """{cell: 0/1 [runs, images]} from the predictions folder, replicates in manifest order."""
    preds, _ = load_predictions(out)
    cells = {}
    for p in sorted(preds, key=lambda p: p.replicate):
        cells.setdefault(p.key, []).append(p.correct)
    return {k: np.stack(v).astype(float) for k, v in cells.items()}


def test_replicated_table_cells_are_means_over_seeds_with_two_level_cis(replicated_run):
    from analysis.stats import replicated_top1_with_ci

    with open(replicated_run / "table.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(ac.REPLICATE_TABLE_COLUMNS)
    runs = _runs_by_cell(replicated_run)
    rows = load_table(replicated_run)
    assert len(rows) == 2 * 6 and {r["seeds"] for r in rows} == {1, 2, 3}
    for r in rows:
        c = runs[(r["config"], r["degradation"], r["classifier"])]
        assert r["seeds"] == c.shape[0] and r["n"] == c.shape[1] == 120 and r["correct"] == int(c.sum())
        # the mean over the seeds of each seed's top-1
        assert r["top1"] == pytest.approx(np.mean([100 * run.mean() for run in c]), abs=1e-4)
        want = replicated_top1_with_ci(c, n_boot=300, seed=0)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]), abs=1e-4)
        assert (r["seed_sd"] is None) == (c.shape[0] == 1)
    md = (replicated_run / "table.md").read_text()
    assert "two-level percentile bootstrap" in md and "w/o DiffLoss 2, w/ DiffLoss 1-3" in md
    assert not (replicated_run / "mcnemar.csv").exists()
    doc = json.loads((replicated_run / "table.json").read_text())
    assert doc["columns"] == list(ac.REPLICATE_TABLE_COLUMNS) and len(doc["comparisons"]) == 8
    assert doc["meta"]["sets"][2]["roots"] and len(doc["meta"]["sets"][2]["roots"]) == 3
    assert r"two-level bootstrap" in (replicated_run / "table.tex").read_text()


def test_replicated_comparisons_match_the_stats_functions(replicated_run):
    from analysis.stats import paired_delta_with_ci, two_level_t_test

    runs = _runs_by_cell(replicated_run)
    tests = ac.load_comparisons(replicated_run)
    assert len(tests) == 2 * 4
    for t in tests:
        a = runs[(t["config_a"], t["degradation"], t["classifier"])]
        b = runs[(t["config_b"], t["degradation"], t["classifier"])]
        assert (t["seeds_a"], t["seeds_b"], t["n"]) == (a.shape[0], b.shape[0], 120)
        assert t["delta"] == pytest.approx(t["top1_b"] - t["top1_a"], abs=1e-3)
        assert t["delta"] == pytest.approx(100 * (b.mean() - a.mean()), abs=1e-3)
        d = paired_delta_with_ci(a, b, n_boot=300, seed=0)
        assert (t["ci_low"], t["ci_high"]) == pytest.approx((100 * d["ci_low"], 100 * d["ci_high"]), abs=1e-3)
        if a.shape[0] == b.shape[0] == 1:  # degraded vs w/ DiffLoss on dark: McNemar's exact test, as before
            hand_b, hand_c = int(np.sum((a[0] == 1) & (b[0] == 0))), int(np.sum((a[0] == 0) & (b[0] == 1)))
            assert t["test"] == "mcnemar" and (t["b"], t["c"]) == (hand_b, hand_c) and t["t"] is None
            assert t["p_value"] == pytest.approx(mcnemar_exact_p(hand_b, hand_c), rel=1e-5)
        else:
            ref = two_level_t_test(a, b)
            assert t["test"] == "two-level t" and t["b"] is None
            assert t["p_value"] == pytest.approx(ref["p_value"], rel=1e-5) and t["df"] == pytest.approx(ref["df"], rel=1e-5)
    raw = [t["p_value"] for t in tests]
    assert [t["p_adjusted"] for t in tests] == pytest.approx(_holm_by_hand(raw), rel=1e-5)
    md = (replicated_run / "table.md").read_text()
    assert "| 1 v 3 |" in md and "| 2 v 3 |" in md and "two-level t, df" in md and "McNemar b=" in md
    assert f"Holm-corrected over all {len(tests)} tests" in md


def test_replicated_rows_say_so_in_the_bar_plot(replicated_run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.table2_plot import plot_table2_bars

    fig, ax = plt.subplots()
    plot_table2_bars(load_table(replicated_run), ax=ax, classifier="vgg-mini")
    labels = ax.get_legend_handles_labels()[1]
    assert "degraded" in labels and "w/o DiffLoss (mean of 2 seeds)" in labels and "w/ DiffLoss (mean of 1-3 seeds)" in labels
    plt.close(fig)


def test_replicated_tables_remake_from_predictions(replicated_run, tmp_path, capsys):
    shutil.copytree(replicated_run / "predictions", tmp_path / "src" / "predictions")
    assert main(["--from-predictions", str(tmp_path / "src"), "--out", str(tmp_path / "again"), "--n-boot", "300"]) == 0
    for name in ("table.csv", "comparisons.csv", "table.md", "table.tex"):
        assert (tmp_path / "again" / name).read_bytes() == (replicated_run / name).read_bytes(), name
    # without the manifest each file is a run, replicates numbered in file order: the same table
    (tmp_path / "src" / "predictions" / "manifest.json").unlink()
    assert main(["--from-predictions", str(tmp_path / "src"), "--out", str(tmp_path / "bare"), "--n-boot", "300"]) == 0
    assert (tmp_path / "bare" / "table.csv").read_bytes() == (replicated_run / "table.csv").read_bytes()
    capsys.readouterr()


def test_spec_file_replicates(tmp_path):
    import yaml

    doc = {"cub_root": "cub", "classifiers": {"r": "r.pt"},
           "sets": {"degraded": {"fog": "deg/fog"}, "w/ DiffLoss": {"fog": ["w/s0", "w/s1"]},
                    "w/o DiffLoss/fog": ["wo/s0", "wo/s1", "wo/s2"]}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    spec, _ = ac.load_spec(tmp_path / "a.yaml")
    roots = {(s.config, s.degradation): s.roots for s in spec.sets}
    assert roots[("degraded", "fog")] == (str(tmp_path / "deg/fog"),)
    assert roots[("w/ DiffLoss", "fog")] == (str(tmp_path / "w/s0"), str(tmp_path / "w/s1"))
    assert len(roots[("w/o DiffLoss", "fog")]) == 3
    listed = {"cub_root": "cub", "classifiers": ["r=r.pt"],
              "sets": [{"config": "w/ DiffLoss", "degradation": "fog", "roots": ["a", "b"]},
                       {"config": "degraded", "degradation": "fog", "root": "d"}, "w/o DiffLoss/fog=c,e"]}
    (tmp_path / "b.json").write_text(json.dumps(listed))
    spec, _ = ac.load_spec(tmp_path / "b.json")
    assert [len(s.roots) for s in spec.sets] == [2, 1, 2]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"sets": {"w/ DiffLoss": {"fog": []}}}))
    with pytest.raises(ValueError, match="a root or a list of roots"):
        ac.load_spec(tmp_path / "c.yaml")


# ---------------------------------------------------------------------------------------------- the run folder
def test_foreign_out_refused_and_own_run_rewritten(tiny_ckpts, mini_root, variants, tmp_path, capsys):
    common = ["--classifier", f"vgg-mini={tiny_ckpts['vgg-mini']}", "--cub-root", str(mini_root),
              "--loader-workers", "0", "--no-progress", "--n-boot", "50"]
    argv = common + ["--set", f"degraded/gray={variants['gray']}"]
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("table.csv", "mcnemar.csv", "config.json"):
        (mine / name).write_text("mine\n")
    assert main(argv + ["--out", str(mine)]) == 2
    err = _one_error_line(capsys)
    assert str(mine) in err and "--overwrite" in err
    assert all((mine / n).read_text() == "mine\n" for n in ("table.csv", "mcnemar.csv", "config.json"))
    # its own earlier run, same inputs: scored again, rewritten (other statistics too)
    out = tmp_path / "run"
    assert main(argv + ["--out", str(out)]) == 0
    first = (out / "table.csv").read_bytes()
    assert main(argv + ["--out", str(out)]) == 0 and (out / "table.csv").read_bytes() == first
    assert main(argv + ["--out", str(out), "--seed", "3"]) == 0 and (out / "table.csv").read_bytes() != first
    assert json.loads((out / "done.json").read_text())["command"] == "analysis.classify"
    # its run of other sets: refused, unless --overwrite
    other = common + ["--set", f"degraded/dark={variants['dark']}", "--out", str(out)]
    assert main(other) == 2
    assert "other settings" in _one_error_line(capsys) and (out / "table.csv").exists()
    assert main(other + ["--overwrite"]) == 0
    assert {r["degradation"] for r in load_table(out)} == {"clean", "dark"}
    # --from-predictions into a foreign folder: refused too
    assert main(["--from-predictions", str(out), "--out", str(mine)]) == 2
    assert "--overwrite" in _one_error_line(capsys) and (mine / "table.csv").read_text() == "mine\n"
    capsys.readouterr()


@pytest.mark.parametrize("flags", [["--cub-root", "c"], ["--classifier", "a=x.pt"], ["--set", "d/fog=r"],
                                   ["--spec", "s.yaml"], ["--bbox-crop"], ["--no-restore"]])
def test_from_predictions_with_scoring_flags_refused(flags, tmp_path, monkeypatch, capsys):
    _forbid_work(monkeypatch)
    assert main(["--from-predictions", str(tmp_path / "p"), "--out", str(tmp_path / "o")] + flags) == 2
    err = _one_error_line(capsys)
    assert "--from-predictions" in err and flags[0] in err and "scores nothing" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage, workers", [("garbage", 0), ("truncated", 2)])
def test_unreadable_image_in_a_set_is_one_line(damage, workers, tiny_ckpts, mini_root, tmp_path, capsys, monkeypatch):
    if damage == "garbage":  # found by the header check, before any image is scored
        import analysis.classify.scoring as scoring

        monkeypatch.setattr(scoring, "predict", lambda *a, **k: pytest.fail("scored before the inputs were checked"))
    broken = _variant(mini_root, tmp_path / "broken")
    rec = read_cub(broken).split("test")[5]
    path = broken / "images" / rec.rel_path
    # garbage fails the header check before any model runs; a truncated JPEG has a valid header and fails in a
    # DataLoader worker, whose traceback must still end as one line naming the file
    path.write_bytes(b"not an image" if damage == "garbage" else path.read_bytes()[:300])
    out = tmp_path / "o"
    assert main(["--classifier", f"vgg-mini={tiny_ckpts['vgg-mini']}", "--cub-root", str(mini_root),
                 "--set", f"degraded/x={broken}", "--out", str(out), "--loader-workers", str(workers),
                 "--no-progress", "--n-boot", "20"]) == 2
    err = _one_error_line(capsys)
    assert "cannot decode image" in err and str(path) in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flag", ["--retrain", "--no-restore"])
def test_demo_only_flags_are_refused_outside_the_demo(flag, tmp_path, capsys):
    assert main(["--classifier", "a=x.pt", "--cub-root", "c", "--out", str(tmp_path / "o"), flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag} applies to the built-in demo only") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_a_cub_root_without_classifier_names_the_first_problem(mini_root, tmp_path, capsys):
    """Without --classifier a wrong --cub-root is what the error names (a new user's first mistake), not the
    missing classifier; a good root without a classifier names that."""
    assert main(["--cub-root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist or is not a folder" in err and "\n" not in err
    assert main(["--cub-root", str(mini_root), "--out", str(tmp_path / "o")]) == 2
    assert "need at least one --classifier" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
