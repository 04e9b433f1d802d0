"""Run plumbing shared by every command of the toolkit, and by nothing else of it: command lines generated from
config dataclasses (`runkit.cli`), one-line errors (`runkit.errors`), torchrun (`runkit.distributed`), torch
threads (`runkit.runtime`), resumable manifests (`runkit.manifest`), registries (`runkit.registry`), value
checks (`runkit.checks`), atomic files and CSV tables (`runkit.files`), run folders (`runkit.rundir`),
worker processes that die with their parent (`runkit.process`).

Imports none of the toolkit's other packages.
"""
