"""classifiers/: registry, ImageNet weights (offline errors, hub cache, local files), fine-tuning on mini-CUB
(above chance, checkpoint contents, exact resume), checkpoint loading errors."""
from __future__ import annotations

import dataclasses
from pathlib import Path
import os

import pytest
import torch
from torch import nn

import classifiers
from classifiers import (
    CLASSIFIERS,
    build_backbone,
    build_classifier,
    default_preprocess,
    eval_transform,
    imagenet_weights_file,
    load_classifier,
)
from classifiers.finetune import FinetuneConfig, build_parser, finetune
from classifiers.finetune import main as finetune_main
from runkit.rundir import read_table
from classifiers.predict import evaluate_top1
from cubdata import CubDataset, read_cub
from runkit.registry import UnknownNameError




def _no_network(monkeypatch):
    def boom(*a, **k):
        raise AssertionError(f"network access attempted: {a[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)


# ---------------------------------------------------------------------------------------------- registry
def test_unknown_arch_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        build_classifier("resnet51", 10)
    for name in CLASSIFIERS:
        assert name in str(e.value)


@pytest.mark.parametrize("arch", sorted(CLASSIFIERS))
def test_new_head_has_num_classes(arch):
    with torch.device("meta"):  # no memory, no init cost: checks the head surgery only
        model = build_classifier(arch, 200, "none")
    _, head = classifiers.classifier_head(model, arch)
    assert isinstance(head, nn.Linear) and head.out_features == 200


@pytest.mark.parametrize("arch", ["vgg-mini", "resnet-mini"])
def test_mini_nets_forward_any_size(arch):
    model = build_classifier(arch, 10, "none").eval()
    for size in (32, 48, 71):
        assert model(torch.rand(2, 3, size, size)).shape == (2, 10)


def test_user_factory_spec_is_built_like_a_registered_arch(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "from classifiers import ResNetMini\n"
        "def tiny():\n"
        "    return ResNetMini(1000, widths=(8, 8, 8, 8))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_classifier("my_nets:tiny", 7)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 7) and model.fc.out_features == 7  # head: the last Linear
    assert classifiers.classifier_head(model, "my_nets:tiny")[0] == "fc"
    assert default_preprocess("my_nets:tiny") == default_preprocess("resnet-mini", 224)  # the entry's defaults
    path = tmp_path / "w.pth"  # --weights PATH: a state dict of the factory's network, as for registered archs
    torch.save(build_backbone("my_nets:tiny", "none").state_dict(), path)
    assert torch.equal(build_classifier("my_nets:tiny", 7, path).stem[0].weight, torch.load(path)["stem.0.weight"])
    with pytest.raises(ValueError, match="no ImageNet-pretrained weights"):
        build_classifier("my_nets:tiny", 7, "imagenet")
    with pytest.raises(UnknownNameError, match="no attribute"):
        build_classifier("my_nets:nope", 7)


def test_one_decorator_registers_an_architecture_everywhere():
    @CLASSIFIERS.register("narrow-test", family="resnet", head="fc", img_size=32, resize=36)
    def narrow():
        return classifiers.ResNetMini(1000, widths=(8, 8, 8, 8))

    try:
        assert CLASSIFIERS.names()[-1] == "narrow-test" and CLASSIFIERS["narrow-test"].build_imagenet_head is narrow
        assert build_classifier("narrow-test", 3).fc.out_features == 3
        assert default_preprocess("narrow-test")["resize"] == 36
        args = build_parser().parse_args(["--arch", "narrow-test", "--cub-root", "x", "--out", "y"])
        assert args.arch == "narrow-test"
        with pytest.raises(ValueError, match="already registered"):
            CLASSIFIERS.register("narrow-test", family="resnet", head="fc", img_size=32, resize=36)(narrow)
    finally:
        CLASSIFIERS.remove("narrow-test")
    assert "narrow-test" not in CLASSIFIERS and CLASSIFIERS.get("narrow-test", None) is None
    assert finetune_main(["--arch", "narrow-test", "--cub-root", "x", "--out", "y"]) == 2  # refused before any work
    assert not Path("y").exists()


def test_default_preprocess_and_eval_transform():
    assert default_preprocess("resnet50")["img_size"] == 448 and default_preprocess("resnet50")["resize"] == 512
    assert default_preprocess("vgg16", 224)["resize"] == 256
    from PIL import Image

    x = eval_transform(default_preprocess("resnet-mini", 48))(Image.new("RGB", (120, 90), (255, 0, 0)))
    assert x.shape == (3, 48, 48)
    assert torch.allclose(x[0], torch.full((48, 48), (1 - 0.485) / 0.229))


# ---------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("arch,fname", [("resnet50", "resnet50-0676ba61.pth"), ("vgg16", "vgg16-397923af.pth")])
def test_imagenet_weights_offline_error(arch, fname, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    _no_network(monkeypatch)
    assert imagenet_weights_file(arch) == tmp_path / "empty-torch-home" / "hub" / "checkpoints" / fname
    with pytest.raises(FileNotFoundError) as e:
        build_backbone(arch, "imagenet")
    msg = str(e.value)
    assert fname in msg and str(tmp_path / "empty-torch-home" / "hub" / "checkpoints") in msg
    assert "--weights PATH" in msg and "download.pytorch.org" in msg


def test_imagenet_weights_read_from_hub_cache(tmp_path, monkeypatch):
    # same file-name logic as the real resnet50, with a small network standing in for the 100 MB one
    real = CLASSIFIERS["resnet50"]
    CLASSIFIERS.add("resnet50", dataclasses.replace(real, build_imagenet_head=lambda: classifiers.ResNetMini(1000)),
                    replace=True)
    try:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        _no_network(monkeypatch)
        ref = classifiers.ResNetMini(1000)
        path = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
        path.parent.mkdir(parents=True)
        torch.save(ref.state_dict(), path)
        got = build_backbone("resnet50", "imagenet")
        for k, v in ref.state_dict().items():
            assert torch.equal(got.state_dict()[k], v), k
        # and with a new head for fine-tuning: body weights kept, head replaced
        clf = build_classifier("resnet50", 10, "imagenet")
        assert torch.equal(clf.layers[0].conv1.weight, ref.layers[0].conv1.weight) and clf.fc.out_features == 10
    finally:
        CLASSIFIERS.add("resnet50", real, replace=True)


def test_weights_path_roundtrip_wrong_arch_and_missing(tmp_path):
    ref = build_backbone("resnet-mini", "none")
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)  # DDP-style file
    got = build_backbone("resnet-mini", path)
    assert all(torch.equal(got.state_dict()[k], v) for k, v in ref.state_dict().items())
    with pytest.raises(ValueError, match="do not fit architecture 'vgg-mini'"):
        build_backbone("vgg-mini", path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("resnet50", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="no ImageNet-pretrained weights"):
        build_backbone("vgg-mini", "imagenet")


# ---------------------------------------------------------------------------------------------- fine-tuning
def test_tiny_finetune_clearly_above_chance(tiny_ckpts, mini_root):
    for arch, ckpt in tiny_ckpts.items():
        model, info = load_classifier(ckpt, expect_arch=arch)
        assert info["arch"] == arch and info["num_classes"] == 10 and info["complete"]
        idx = read_cub(mini_root)
        assert info["class_names"] == [idx.classes[k] for k in sorted(idx.classes)]
        assert info["preprocess"]["img_size"] == 48
        # 10 classes: chance is 10 %
        assert info["clean_test_top1"] >= 50.0, (arch, info["clean_test_top1"])
        # the recorded clean accuracy is what the loaded model scores
        ds = CubDataset(mini_root, "test", transform=eval_transform(info["preprocess"]))
        assert evaluate_top1(model, ds) == pytest.approx(info["clean_test_top1"])
        assert not model.training and not any(p.requires_grad for p in model.parameters())


def _tiny_config(mini_root, out, **kw):
    base = dict(arch="resnet-mini", cub_root=str(mini_root), out=str(out), weights="none", img_size=32, epochs=3,
                batch_size=16, lr=0.05, loader_workers=0, progress=False, threads=1)
    base.update(kw)
    return FinetuneConfig(**base)


def test_resume_equals_uninterrupted_and_global_rng_untouched(mini_root, tmp_path):
    rng_before = torch.get_rng_state()
    straight = finetune(_tiny_config(mini_root, tmp_path / "a"))
    assert torch.equal(torch.get_rng_state(), rng_before)

    class Stop(Exception):
        pass

    def stop_after_two(epoch, record):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        finetune(_tiny_config(mini_root, tmp_path / "b"), on_epoch_end=stop_after_two)
    partial = torch.load(tmp_path / "b" / "classifier.pt", weights_only=True)
    assert partial["epoch"] == 2 and not partial["complete"] and partial["clean_test_top1"] is None
    with pytest.raises(ValueError, match="other settings .*lr: 0.05 there, 0.01 now"):
        finetune(_tiny_config(mini_root, tmp_path / "b", lr=0.01))
    resumed = finetune(_tiny_config(mini_root, tmp_path / "b"))  # the same command again resumes
    a = torch.load(tmp_path / "a" / "classifier.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "classifier.pt", weights_only=True)
    assert b["complete"] and b["epoch"] == 3
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert resumed["clean_test_top1"] == straight["clean_test_top1"]
    assert [r["epoch"] for r in read_table(tmp_path / "b" / "log.csv")] == [1, 2, 3]
    # a finished run is reused, not retrained
    again = finetune(_tiny_config(mini_root, tmp_path / "b"))
    assert again["skipped"] and again["clean_test_top1"] == straight["clean_test_top1"]
    # --overwrite starts again
    assert not finetune(_tiny_config(mini_root, tmp_path / "b", lr=0.01, overwrite=True))["skipped"]


def test_load_classifier_errors(tiny_ckpts, tmp_path):
    ckpt = tiny_ckpts["resnet-mini"]
    with pytest.raises(ValueError, match="holds a 'resnet-mini' classifier, but 'vgg-mini' was expected"):
        load_classifier(ckpt, expect_arch="vgg-mini")
    tampered = torch.load(ckpt, weights_only=True)
    tampered["arch"] = "vgg-mini"
    torch.save(tampered, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="do not fit architecture 'vgg-mini'"):
        load_classifier(tmp_path / "tampered.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        load_classifier(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_classifier(tmp_path / "missing.pt")


def test_finetune_cli_clear_errors(mini_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    _no_network(monkeypatch)
    out = str(tmp_path / "x")
    assert finetune_main(["--arch", "resnet50", "--cub-root", str(mini_root), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "resnet50-0676ba61.pth" in err and "--weights PATH" in err
    assert finetune_main(["--arch", "resnet-mini", "--cub-root", str(mini_root), "--out", out,
                          "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert not os.path.exists(out)
    assert finetune_main(["--arch", "resnet51", "--cub-root", "x", "--out", out]) == 2
    assert "unknown classifier 'resnet51'" in capsys.readouterr().err and not os.path.exists(out)
    args = build_parser().parse_args(["--arch", "pkg.mod:factory", "--cub-root", "x", "--out", "y"])
    assert args.arch == "pkg.mod:factory"


def _hand_top1(model, dataset) -> tuple[int, int]:
    """``(right, n)``: the test images ``model`` labels correctly, counted one image at a time."""
    right = 0
    with torch.no_grad():
        for i in range(len(dataset)):
            x, y, _ = dataset[i]
            right += int(model(x[None]).argmax(1).item() == y)
    return right, len(dataset)


def test_finetune_cli_trains_and_records_the_hand_counted_top1(mini_root, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = finetune_main(["--arch", "vgg-mini", "--cub-root", str(mini_root), "--out", str(out), "--weights", "none",
                        "--img-size", "32", "--epochs", "1", "--loader-workers", "0", "--no-progress", "--threads", "1"])
    printed = capsys.readouterr().out
    assert rc == 0
    model, info = load_classifier(out)
    assert info["arch"] == "vgg-mini" and info["epochs"] == 1
    # the recorded (and printed) clean top-1 is exactly the share of test images the saved model gets right
    right, n = _hand_top1(model, CubDataset(mini_root, "test", transform=eval_transform(info["preprocess"])))
    assert n == 120  # mini-CUB: 10 classes x 12 test images
    assert info["clean_test_top1"] == pytest.approx(100.0 * right / n, abs=1e-9), (right, n)
    assert f"clean test top-1 {100.0 * right / n:.2f}%" in printed


class _ReadsTheAnswer(nn.Module):
    """Predicts the class written in the top-left pixel of channel 0 (logits: one-hot of that value)."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 4).float()


def test_top1_is_the_share_of_right_predictions():
    from classifiers.predict import top1_percent

    preds = [0, 1, 2, 3, 0, 1, 2]
    labels = [0, 1, 0, 3, 1, 1, 3]  # right: images 0, 1, 3, 5 -> 4 of 7
    data = [(torch.full((3, 4, 4), float(p)), lab, i) for i, (p, lab) in enumerate(zip(preds, labels))]
    # batches of 3 leave a last batch of one: it must count, and count once
    assert evaluate_top1(_ReadsTheAnswer(), data, batch_size=3) == pytest.approx(400.0 / 7, abs=1e-9)
    assert evaluate_top1(_ReadsTheAnswer(), data[:4], batch_size=3) == pytest.approx(75.0, abs=1e-9)
    assert evaluate_top1(_ReadsTheAnswer(), data[2:3]) == 0.0
    assert top1_percent(3, 8) == 37.5 and top1_percent(8, 8) == 100.0
    for bad in ((1, 0), (5, 4), (-1, 4)):
        with pytest.raises(ValueError):
            top1_percent(*bad)


@pytest.mark.slow
def test_torchrun_ddp_two_processes_cpu(mini_root, tmp_path):
    """`torchrun --nproc_per_node 2 -m classifiers.finetune` (DDP over gloo on CPU) runs to the end and rank 0
    alone writes one finished checkpoint and prints one summary."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "classifiers.finetune", "--arch", "resnet-mini", "--cub-root", str(mini_root), "--out", str(out),
           "--weights", "none", "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--loader-workers", "0",
           "--no-progress", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DDP x2" in res.stderr and res.stdout.count("clean test top-1") == 1
    ckpt = torch.load(out / "classifier.pt", weights_only=True)
    assert ckpt["complete"] and ckpt["epoch"] == 2 and ckpt["clean_test_top1"] is not None
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2]


# ---------------------------------------------------------------------------------------------- bbox protocol
def _box_then_square(path, bbox, resize, crop, preprocess):
    """URIE's protocol written out by hand: box crop -> resize x resize (bilinear) -> centre crop -> normalise."""
    from torchvision.transforms import functional as TF

    from cubdata import crop_to_bbox, load_pil_rgb

    img = crop_to_bbox(load_pil_rgb(path), bbox)
    img = TF.center_crop(TF.resize(img, [resize, resize], interpolation=TF.InterpolationMode.BILINEAR), [crop, crop])
    return TF.normalize(TF.to_tensor(img), preprocess["mean"], preprocess["std"])


def test_finetune_bbox_crop_trains_on_boxes_and_records_protocol(tmp_path, monkeypatch, capsys):
    from PIL import Image

    import classifiers.finetune as cf
    import classifiers.finetune.loop as loop
    from cubdata import crop_to_bbox, generate_mini_cub, load_pil_rgb

    index = generate_mini_cub(tmp_path / "cub", n_classes=2, per_class=4)
    train = index.split("train")
    full_sizes = sorted(Image.open(index.image_path(r)).size for r in train)
    box_sizes = sorted(crop_to_bbox(load_pil_rgb(index.image_path(r)), r.bbox).size for r in train)
    assert box_sizes != full_sizes  # otherwise the test could not tell the two apart

    seen, eval_sets = [], []
    real_train, real_eval = loop.train_transform, loop.evaluate_top1

    def recording_train_transform(preprocess, *args):
        t = real_train(preprocess, *args)

        def f(img):
            seen.append(img.size)
            return t(img)
        return f

    def recording_evaluate(model, dataset, *a, **k):
        eval_sets.append(dataset)
        return real_eval(model, dataset, *a, **k)

    # patched where the training loop looks them up
    monkeypatch.setattr(loop, "train_transform", recording_train_transform)
    monkeypatch.setattr(loop, "evaluate_top1", recording_evaluate)
    out = tmp_path / "bbox"
    assert cf.main(["--arch", "resnet-mini", "--cub-root", str(tmp_path / "cub"), "--out", str(out), "--weights", "none",
                    "--img-size", "32", "--bbox-crop", "--bbox-size", "36,32", "--epochs", "1", "--batch-size", "16",
                    "--loader-workers", "0", "--no-progress", "--threads", "1"]) == 0
    assert "clean test top-1" in capsys.readouterr().out
    # training saw every train image once, cropped to its box (before the random resized crop)
    assert sorted(seen) == box_sizes
    # evaluation: box -> 36x36 -> centre crop 32, image by image as written out by hand
    (ds,) = eval_sets
    test = index.split("test")
    assert len(ds) == len(test)
    pp = dict(default_preprocess("resnet-mini", 32), resize=36)
    for i, r in enumerate(test):
        assert torch.allclose(ds[i][0], _box_then_square(index.image_path(r), r.bbox, 36, 32, pp), atol=1e-6)
    ckpt = torch.load(out / "classifier.pt", weights_only=True)
    assert ckpt["protocol"] == {"bbox_crop": True, "bbox_size": [36, 32]}
    assert ckpt["preprocess"]["img_size"] == 32 and ckpt["preprocess"]["resize"] == 36
    _, info = load_classifier(out)
    assert info["protocol"] == {"bbox_crop": True, "bbox_size": [36, 32]}


def test_whole_image_protocol_recorded_and_a_checkpoint_without_one_refused(tiny_ckpts, tmp_path):
    ckpt = torch.load(tiny_ckpts["resnet-mini"], weights_only=True)
    assert ckpt["protocol"] == {"bbox_crop": False, "bbox_size": None}
    _, info = load_classifier(tiny_ckpts["resnet-mini"])
    assert info["protocol"] == {"bbox_crop": False, "bbox_size": None}
    del ckpt["protocol"]
    torch.save(ckpt, tmp_path / "no-protocol.pt")
    with pytest.raises(ValueError, match="'protocol' must be a mapping with bbox_crop and bbox_size, found None"):
        load_classifier(tmp_path / "no-protocol.pt")


def test_finetune_bbox_config_checks_and_flags(mini_root, tmp_path):
    from classifiers import URIE_BBOX_SIZE, eval_protocol

    cfg = _tiny_config(mini_root, tmp_path / "x.pt", bbox_crop=True)  # img_size 32 vs the default 256,227
    with pytest.raises(ValueError, match=r"--bbox-size 36,32"):
        cfg.validate()
    _tiny_config(mini_root, tmp_path / "x.pt", bbox_crop=True, bbox_size=(36, 32)).validate()
    _tiny_config(mini_root, tmp_path / "x.pt", bbox_crop=True, bbox_size=None).validate()  # own sizes
    _tiny_config(mini_root, tmp_path / "x.pt", img_size=None, bbox_crop=True).validate()  # URIE's 256,227
    # the box sizes count for resuming only when boxes are cropped
    assert "bbox_size" not in _tiny_config(mini_root, tmp_path / "x").result_settings()
    assert _tiny_config(mini_root, tmp_path / "x", bbox_crop=True, bbox_size=(36, 32)).result_settings()["bbox_size"] == [36, 32]
    args = build_parser().parse_args(["--arch", "resnet-mini", "--cub-root", "x", "--out", "y"])
    assert args.bbox_crop is False and tuple(args.bbox_size) == URIE_BBOX_SIZE == (256, 227)
    args = build_parser().parse_args(["--arch", "resnet-mini", "--cub-root", "x", "--out", "y", "--bbox-crop",
                                      "--bbox-size", "classifier"])
    assert args.bbox_crop and args.bbox_size is None
    assert eval_protocol(False, (256, 227)) == {"bbox_crop": False, "bbox_size": None}
    assert eval_protocol(True) == {"bbox_crop": True, "bbox_size": [256, 227]}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--arch", "resnet-mini", "--cub-root", "x", "--out", "y", "--bbox-size", "227,256"])


def test_eval_every_monitors_a_held_out_part_of_train_and_reads_test_once(mini_root, tmp_path, monkeypatch):
    """--eval-every measures the --val-fraction part of the train split; the test split is scored once, at the
    end, and the held-out images are not trained on."""
    from classifiers.finetune import loop

    with pytest.raises(ValueError, match="--eval-every .* --val-fraction"):
        _tiny_config(mini_root, tmp_path / "x", eval_every=1).validate()
    scored, trained_on = [], []
    real_eval, real_data = loop.evaluate_top1, loop._load_data

    def spy_eval(model, dataset, *a, **k):
        scored.append((dataset.split, len(dataset)))
        return real_eval(model, dataset, *a, **k)

    def spy_data(config):
        data = real_data(config)
        trained_on.extend(r.image_id for r in data.train_set.records)
        return data

    monkeypatch.setattr(loop, "evaluate_top1", spy_eval)
    monkeypatch.setattr(loop, "_load_data", spy_data)
    cfg = _tiny_config(mini_root, tmp_path / "v", epochs=2, eval_every=1, val_fraction=0.25)
    finetune(cfg)
    assert scored == [("train", 20), ("train", 20), ("test", 120)]  # 2 of each class's 8 train images held out
    assert len(trained_on) == 60
    rows = read_table(tmp_path / "v" / "log.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and all(0 <= r["val_top1"] <= 100 for r in rows)
