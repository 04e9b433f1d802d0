"""The built-in demo, in one place: its settings, shipped weights, cached artefacts and steps.

- `analysis.demo.classifiers`: the two small classifiers (VGG-mini, ResNet-mini) trained on mini-CUB;
- `analysis.demo.restorers`: the small restorers without and with DiffLoss on synthetic mini-CUB pairs, one
  pair per restorer seed;
- `analysis.demo.weights`: the shipped weights of both (``weights/NAME.safetensors`` + ``NAME.json``), rebuilt
  by ``python -m analysis.demo.ship``;
- `analysis.demo.table2`: ``make demo`` (Table 2 on mini-CUB) and the commands for real data;
- `analysis.demo.docs`: the README's and docs' demo tables, made from the demo's output (``make docs-figures``);
- `analysis.demo.hspace_quick`: the h-space study's quick-mode groups.

Everything else is cached under `cubdata.cache_dir` (``$DIFFLOSS_CACHE``), keyed by the recipes.
"""
from analysis.demo.classifiers import DEMO_ARCHS, DEMO_FINETUNE, demo_classifiers, digest
from analysis.demo.restorers import DEMO_SEEDS, DEMO_SETTINGS, demo_restorer_replicates, ensure_demo_restorers

__all__ = ["DEMO_ARCHS", "DEMO_FINETUNE", "demo_classifiers", "digest", "DEMO_SETTINGS", "DEMO_SEEDS",
           "ensure_demo_restorers", "demo_restorer_replicates",
           "DEMO_CORRUPTIONS", "DEMO_SEVERITY", "DEMO_ROWS", "demo_spec", "run_demo", "quick_groups",
           "subset_cub_root"]

_LAZY = {"DEMO_CORRUPTIONS": "table2", "DEMO_SEVERITY": "table2", "DEMO_ROWS": "table2", "demo_spec": "table2",
         "run_demo": "table2", "quick_groups": "hspace_quick",
         "subset_cub_root": "hspace_quick"}


def __getattr__(name):  # the Table 2 and h-space parts import analysis.classify / analysis.hspace: load on use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
