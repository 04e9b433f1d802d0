"""Every registry, one contract (timm's test_models style): every registered entry is built and run on a tiny
input, and every registry reads alike: ``r[name]`` is ``r.get(name)``, an unknown name raises
`runkit.registry.UnknownNameError` listing the valid names (``get(name, default)`` returns the default), and a
plug-in ``"pkg.module:attr"`` is made into an entry that behaves as the same object registered by name."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from classifiers import CLASSIFIERS, build_classifier
from corruptions import CORRUPTIONS, corrupt
from diffloss.criterion.timestep_weights import T_WEIGHTINGS, timestep_weight_table
from diffloss.prior.configs import ADM_BASE, PRIOR_CHECKPOINTS, PRIOR_CONFIGS, build_unet, prior_kwargs
from restoration.nets import NETS, build_net
from runkit.registry import Registry, UnknownNameError
from runkit.runtime import count_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEVERITIES = (1, 2, 3, 4, 5)
# a stand-in for guided-diffusion's GaussianDiffusion: what a t-weighting reads
DIFFUSION = SimpleNamespace(num_timesteps=10, alphas_cumprod=np.linspace(0.99, 0.01, 10))
SMALL_PRIOR = 5_000_000  # parameters: configs up to this size run once on the CPU


# ------------------------------------------------------------------------------ one plug-in per family
def invert(image, severity, rng):
    return 255 - image


def tiny_net():
    return nn.Conv2d(3, 3, 3, padding=1)


def tiny_classifier():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 1000))


TINY_PRIOR = dict(ADM_BASE, image_size=32, num_channels=32, channel_mult="1,1,2", attention_resolutions="16,8",
                  num_head_channels=32, num_res_blocks=1)


def linear_weights(diffusion):
    return np.linspace(1.0, 2.0, diffusion.num_timesteps)


# ------------------------------------------------------------------------------ how each family's entries run
def run_corruption(entry) -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    outs = []
    for severity in SEVERITIES:
        out = entry(image, severity, np.random.default_rng(severity))
        assert out.dtype == np.uint8 and out.shape == image.shape
        outs.append(out)
    return np.stack(outs)


def run_net(factory) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = factory().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    return y


def run_classifier(entry) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = entry(3, "none").eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3) and torch.isfinite(y).all()
    return y


def run_prior_config(config: dict) -> torch.Tensor:
    """Build on the meta device (adm256-uncond has 552,814,086 parameters: never materialised here); run the
    small ones once."""
    kwargs = prior_kwargs(config)
    meta, _ = build_unet(kwargs, "meta")
    if count_parameters(meta) > SMALL_PRIOR:
        return torch.tensor(float(count_parameters(meta)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet, _ = build_unet(kwargs, "cpu")
    size = kwargs["image_size"]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = unet.eval()(x, torch.tensor([5]))
    assert y.shape == (1, 6 if kwargs["learn_sigma"] else 3, size, size) and torch.isfinite(y).all()
    return y


def run_t_weighting(fn) -> np.ndarray:
    table = np.asarray(fn(DIFFUSION), dtype=np.float64)
    assert table.shape == (DIFFUSION.num_timesteps,) and np.all(np.isfinite(table)) and np.all(table >= 0)
    return table


@dataclass(frozen=True)
class Family:
    registry: Registry
    run: Callable[[Any], Any]  # entry -> a value two equal entries give alike
    plugin: str  # "pkg.module:attr" of this module's plug-in
    front_door: Callable[[str], Any]  # the library function that takes a name from users


FAMILIES = {
    "corruptions": Family(CORRUPTIONS, run_corruption, f"{__name__}:invert",
                          lambda name: corrupt(np.zeros((4, 4, 3), np.uint8), name, 1, rng=0)),
    "restoration nets": Family(NETS, run_net, f"{__name__}:tiny_net", build_net),
    "classifiers": Family(CLASSIFIERS, run_classifier, f"{__name__}:tiny_classifier",
                          lambda name: build_classifier(name, 3, "none")),
    "prior configs": Family(PRIOR_CONFIGS, run_prior_config, f"{__name__}:TINY_PRIOR", prior_kwargs),
    "t-weightings": Family(T_WEIGHTINGS, run_t_weighting, f"{__name__}:linear_weights",
                           lambda name: timestep_weight_table(DIFFUSION, name, (0, DIFFUSION.num_timesteps))),
}
ENTRIES = [(family, name) for family, f in FAMILIES.items() for name in f.registry.names()]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return np.array_equal(a, b)


# ------------------------------------------------------------------------------ every entry runs
@pytest.mark.parametrize("family, name", ENTRIES, ids=[f"{f}:{n}" for f, n in ENTRIES])
def test_every_registered_entry_runs_on_a_tiny_input(family, name):
    f = FAMILIES[family]
    f.run(f.registry[name])


def test_every_prior_config_builds_on_the_meta_device_and_the_paper_prior_has_its_size():
    sizes = {name: count_parameters(build_unet(prior_kwargs(name), "meta")[0]) for name in PRIOR_CONFIGS}
    for name, info in PRIOR_CHECKPOINTS.items():
        assert sizes[name] == info.num_parameters  # adm256-uncond: 552,814,086
    assert any(n <= SMALL_PRIOR for n in sizes.values()), "no config is small enough to run here"


# ------------------------------------------------------------------------------ one contract for all
FAMILY_IDS = list(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_item_access_and_get_return_the_same_entry(family):
    r = FAMILIES[family].registry
    for name in r.names():
        assert r[name] is r.get(name) is r.get(name, None)
    spec = FAMILIES[family].plugin
    assert r[spec] == r.get(spec) == r.get(spec, None)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_unknown_name_raises_one_error_listing_the_valid_names(family):
    f = FAMILIES[family]
    r = f.registry
    for read in (r.__getitem__, r.get, f.front_door):
        with pytest.raises(UnknownNameError) as err:
            read("no-such-name")
        assert all(name in str(err.value) for name in r.names()) and "'pkg.module:attr'" in str(err.value)
    with pytest.raises(UnknownNameError, match="cannot import"):
        r["no_such_module_xyz:thing"]
    assert issubclass(UnknownNameError, ValueError)  # expected failures: one line on stderr in every CLI
    sentinel = object()
    assert r.get("no-such-name", None) is None and r.get("no_such_module_xyz:thing", sentinel) is sentinel


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_a_plugin_behaves_like_the_same_object_registered(family):
    f = FAMILIES[family]
    r = f.registry
    obj = globals()[f.plugin.partition(":")[2]]
    r.register("registry-test-entry")(obj)
    try:
        assert _same(f.run(r[f.plugin]), f.run(r["registry-test-entry"]))
        f.front_door(f.plugin)  # the library functions take it too
    finally:
        r.remove("registry-test-entry")
    assert "registry-test-entry" not in r


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_the_registry_api_is_small(family):
    r = FAMILIES[family].registry
    assert isinstance(r, Registry)
    for gone in ("__setitem__", "__delitem__", "keys", "values"):  # not a dict: register/add/remove write it
        assert not hasattr(r, gone), gone
    assert list(r) == list(r.names()) == [name for name, _ in r.items()] and len(r) == len(r.names())
