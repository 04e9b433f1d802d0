"""The README's "Extending the toolkit" block, executed exactly as written, then used end to end: the new
corruption is built by default, the new network trains on its synthetic pairs and restores the degraded split,
the new classifier fine-tunes, and the new row appears in Table 2."""
from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_extending_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Extending the toolkit", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's Extending section must hold exactly one python block"
    return blocks[0]


@pytest.fixture
def readme_plugins():
    """Run the README block as the module ``readme_plugins``; unregister everything it registered afterwards."""
    from classifiers import CLASSIFIERS
    from corruptions import CORRUPTIONS
    from restoration.nets import NETS

    before = {reg: set(reg.names()) for reg in (CORRUPTIONS, NETS, CLASSIFIERS)}
    module = types.ModuleType("readme_plugins")
    sys.modules[module.__name__] = module
    try:
        exec(compile(readme_extending_block(), "README.md#extending-the-toolkit", "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop(module.__name__, None)
        for reg, names in before.items():
            for name in set(reg.names()) - names:
                reg.remove(name)


def test_readme_block_registers_one_entry_per_family(readme_plugins):
    from classifiers import CLASSIFIERS
    from corruptions import corrupt, get_corruption_names
    from restoration.nets import NETS, build_net

    import numpy as np

    assert get_corruption_names()[-1] == "invert"
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert (corrupt(img, "invert", 1, rng=0) == 255 - img).all()
    assert "tiny-conv" in NETS and build_net("tiny-conv", width=4)[0].out_channels == 4
    assert "tiny-cnn" in CLASSIFIERS
    assert readme_plugins.ROW.config == "my restorer" and readme_plugins.ROW.degradation == "invert"


def test_readme_plugins_run_through_build_train_restore_finetune_and_table2(readme_plugins, mini_root, tmp_path):
    from analysis.classify import Table2Spec, load_table, run_table2
    from classifiers.finetune import FinetuneConfig, finetune
    from corruptions.degrade import build_degraded_cub
    from restoration.restore import restore_cub_root
    from restoration.train import train_restoration

    degraded = tmp_path / "degraded"
    build_degraded_cub(mini_root, degraded, severities=(1,), split="test", workers=1, progress=False)
    assert {p.name for p in degraded.iterdir() if p.is_dir()} == {"fog", "rain", "lowlight", "invert"}

    run = train_restoration(out=str(tmp_path / "net"), net="tiny-conv", pairs="synthetic:invert:1", steps=3,
                            batch_size=2, crop=32, val_images=0, diffloss=False, plot=False, progress=False)
    restored = tmp_path / "restored"
    restore_cub_root(run / "ckpt.pt", degraded / "invert" / "1", restored, device="cpu", progress=False)

    clf = finetune(FinetuneConfig(arch="tiny-cnn", cub_root=str(mini_root), out=str(tmp_path / "tiny-cnn.pt"),
                                  weights="none", epochs=1, batch_size=16, loader_workers=0, device="cpu", amp=False,
                                  progress=False))
    row = dataclasses.replace(readme_plugins.ROW, roots=(str(restored),))
    spec = Table2Spec(str(mini_root), {"tiny-cnn": clf["ckpt"]},
                      [dataclasses.replace(row, config="degraded", roots=(str(degraded / "invert" / "1"),)), row])
    run_table2(spec, tmp_path / "table", device="cpu", batch_size=32, workers=0, n_boot=10, progress=False)
    rows = load_table(tmp_path / "table")
    assert {(r["config"], r["degradation"]) for r in rows} >= {("my restorer", "invert"), ("degraded", "invert")}
    assert all(r["n"] == 120 for r in rows)


def test_plugins_by_name_on_the_command_line(tmp_path, mini_root):
    """The CLI spelling of docs/extending.md: pkg.module:attr, no registration needed."""
    from corruptions.degrade import main as build_main

    assert build_main(["--cub-root", str(mini_root), "--out", str(tmp_path / "d"), "--corruptions",
                       "test_extending:negative", "--severities", "2", "--split", "test", "--workers", "1",
                       "--no-progress"]) == 0
    assert len(list((tmp_path / "d" / "test_extending:negative" / "2" / "images").rglob("*.jpg"))) == 120


def negative(image, severity, rng):  # a plug-in corruption named as test_extending:negative
    return 255 - image
