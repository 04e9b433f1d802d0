"""corruptions: registry, validation, determinism, odd sizes, hand-checked physics, severity monotonicity."""
from __future__ import annotations

import ast
import inspect
import sys
import textwrap

import numpy as np
import pytest

import corruptions
from corruptions import (
    CORRUPTION_IDS,
    CORRUPTIONS,
    SEVERITY_TABLES,
    corrupt,
    corruption_id,
    corruption_parameters,
    get_corruption,
    get_corruption_names,
    image_rng,
)
from corruptions.fog import FOG_TABLE, fog, seeded_global_numpy
from corruptions.lowlight import LOWLIGHT_TABLE, linear_to_srgb, lowlight, srgb_to_linear
from corruptions.rain import RAIN_TABLE, rain, rain_streak_kernel
from runkit.registry import UnknownNameError

NAMES = ("fog", "rain", "lowlight")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def mini_images(mini_root):
    from cubdata import load_rgb, read_cub

    idx = read_cub(mini_root)
    recs = idx.split("test")[::10]  # 6 images, both shapes, several classes
    return [load_rgb(idx.image_path(r)) for r in recs]


def test_registry_names_ids_and_tables():
    assert get_corruption_names() == list(NAMES)
    assert list(CORRUPTIONS) == list(NAMES)
    assert all(CORRUPTIONS[n].name == n == CORRUPTIONS[n].fn.__name__ for n in NAMES)
    assert CORRUPTION_IDS == {"fog": 1, "rain": 2, "lowlight": 3}  # part of every seed: never renumber
    for n in NAMES:
        assert len(SEVERITY_TABLES[n]) == 5
        assert corruption_parameters(n, 1) == SEVERITY_TABLES[n][0]._asdict()
    assert corruption_parameters("rain", 5)["density"] == 0.014


def test_fog_table_matches_imagecorruptions_source():
    from imagecorruptions import corruptions as ic

    src = textwrap.dedent(inspect.getsource(ic.fog))
    line = next(ln for ln in src.splitlines() if ln.strip().startswith("c = ["))
    table = ast.literal_eval(line.split("=", 1)[1].strip().removesuffix("[severity - 1]"))
    assert [tuple(p) for p in FOG_TABLE] == [tuple(map(float, row)) for row in table]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1, 3), (17, 300, 3), (300, 17, 3), (31, 33, 3), (96, 160, 3)])
def test_any_size_keeps_shape_and_dtype(name, shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for sev in (1, 5):
        out = CORRUPTIONS[name](img, sev, np.random.default_rng(1))
        assert out.shape == shape and out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize("name", NAMES)
def test_same_rng_same_bytes_other_seed_differs(name, mini_images):
    img = mini_images[0]
    a = corrupt(img, name, 3, rng=np.random.default_rng(7))
    b = corrupt(img, name, 3, rng=7)  # an int seed means default_rng(seed)
    c = corrupt(img, name, 3, rng=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.shares_memory(a, img)


@pytest.mark.parametrize("name", NAMES)
def test_severity_monotonic_psnr(name, mini_images):
    """Mean PSNR against the clean image falls strictly from severity 1 to 3 to 5."""
    means = {}
    for sev in (1, 3, 5):
        means[sev] = np.mean([psnr(corrupt(x, name, sev, rng=i), x) for i, x in enumerate(mini_images)])
    assert means[1] > means[3] > means[5], means


def test_fog_is_imagenet_c_fog_seeded_from_rng(mini_images):
    """Our fog is imagecorruptions.corrupt(..., 'fog') with the global RNG seeded from the first draw of rng."""
    from imagecorruptions import corrupt as ic_corrupt

    img = mini_images[1]
    seed = int(np.random.default_rng(5).integers(0, 2**32))
    np.random.seed(seed)
    expected = ic_corrupt(img, severity=4, corruption_name="fog")
    assert np.array_equal(fog(img, 4, np.random.default_rng(5)), expected)


def test_fog_ignores_and_restores_global_numpy_state(mini_images):
    img = mini_images[2]
    np.random.seed(1)
    a = fog(img, 2, np.random.default_rng(3))
    after_a = np.random.random()
    np.random.seed(1)
    expected_next = np.random.random()
    np.random.seed(2)  # another global state must not change the result
    b = fog(img, 2, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert after_a == expected_next  # global state as it was before the call
    with pytest.raises(RuntimeError):
        with seeded_global_numpy(0):
            np.random.seed(99)
            raise RuntimeError("boom")
    np.random.seed(4)
    state = np.random.get_state()[1].copy()
    with pytest.raises(RuntimeError), seeded_global_numpy(0):
        raise RuntimeError("restored even on error")
    assert np.array_equal(np.random.get_state()[1], state)


def test_fog_small_image_uses_same_code_path():
    """Below 32 px imagecorruptions.corrupt refuses; we call its fog function directly (same math)."""
    from imagecorruptions.corruptions import fog as ic_fog
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, (20, 50, 3), dtype=np.uint8)
    seed = int(np.random.default_rng(9).integers(0, 2**32))
    np.random.seed(seed)
    expected = np.uint8(ic_fog(Image.fromarray(img), 3))
    assert np.array_equal(fog(img, 3, np.random.default_rng(9)), expected)


def test_lowlight_transfer_and_exposure_hand_computed():
    x = np.linspace(0, 1, 257)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    assert srgb_to_linear(np.array([128 / 255]))[0] == pytest.approx(0.21586, abs=1e-4)
    # noise-free exposure drop of mid-grey and white, as in the README table
    grey = [round(float(linear_to_srgb(p.exposure * srgb_to_linear(128 / 255.0))) * 255) for p in LOWLIGHT_TABLE]
    white = [round(float(linear_to_srgb(np.float64(p.exposure))) * 255) for p in LOWLIGHT_TABLE]
    assert grey == [66, 45, 30, 19, 11]
    assert white == [137, 97, 69, 48, 33]
    assert linear_to_srgb(np.float32([0.5, 2.0, -1.0])).dtype == np.float32
    assert np.allclose(linear_to_srgb(np.float32([0.5, 2.0, -1.0])), [0.73536, 1.0, 0.0], atol=1e-4)


@pytest.mark.parametrize("level, severity", [(128, 1), (255, 2), (255, 3)])
def test_lowlight_noise_variance_is_shot_plus_read(level, severity):
    """On a flat image the linear-light variance is shot * y + read**2 (Poisson-Gaussian model); levels
    chosen so that clipping at 0 is negligible (y > 3.5 sigma)."""
    img = np.full((200, 200, 3), level, np.uint8)
    p = LOWLIGHT_TABLE[severity - 1]
    out = lowlight(img, severity, np.random.default_rng(0))
    y = srgb_to_linear(out / 255.0)
    y_clean = p.exposure * srgb_to_linear(level / 255.0)
    assert y.mean() == pytest.approx(y_clean, rel=0.03)
    assert y.var() == pytest.approx(p.shot * y_clean + p.read**2, rel=0.06)


def test_rain_streak_kernel_geometry():
    k = rain_streak_kernel(20, 0.0, 0.5)
    assert k.max() == pytest.approx(1.0)
    rows = np.nonzero(k.max(axis=1) > 0.5)[0]
    cols = np.nonzero(k.max(axis=0) > 0.5)[0]
    assert 19 <= len(rows) <= 22 and len(cols) <= 2  # a vertical 20-px line, ~1 px wide
    assert np.allclose(rain_streak_kernel(20, 90.0, 0.5), k.T, atol=1e-6)  # 90 degrees: horizontal


def test_rain_fft_convolution_matches_scipy_signal():
    from scipy import signal

    from corruptions.rain import _convolve_same

    rng = np.random.default_rng(0)
    for shape in ((40, 70), (3, 90), (1, 1)):
        a = rng.random(shape).astype(np.float32)
        k = rain_streak_kernel(15, 12.0, 0.7)
        assert np.allclose(_convolve_same(a, k), signal.fftconvolve(a, k, mode="same"), atol=1e-5)


def test_rain_lightens_streaks_are_vertical_and_scale_invariant():
    black = np.zeros((224, 224, 3), np.uint8)
    out = rain(black, 1, np.random.default_rng(0)).astype(np.float64)[..., 0]
    assert out.max() > 100 and 0 < (out > 20).mean() < 0.2
    # streaks within 10 degrees of vertical: far more correlated along columns than rows
    z = out - out.mean()
    vert = np.mean(z[3:] * z[:-3])
    horiz = np.mean(z[:, 3:] * z[:, :-3])
    assert vert > 5 * abs(horiz)
    # screen blend: rain never darkens, so white stays white when there is no veil (severity 1)
    white = np.full((64, 80, 3), 255, np.uint8)
    assert np.array_equal(rain(white, 1, np.random.default_rng(0)), white)
    # the veil pulls towards A = 0.8 at higher severities
    assert rain(white, 5, np.random.default_rng(0)).mean() < 255
    # same look at twice the resolution: streak coverage (mean brightness on black) about the same
    big = rain(np.zeros((448, 448, 3), np.uint8), 3, np.random.default_rng(1)).mean()
    small = np.mean([rain(black, 3, np.random.default_rng(s)).mean() for s in range(4)])
    assert big == pytest.approx(small, rel=0.25)


def test_rain_table_grows_with_severity():
    for field in ("density", "length", "angle", "opacity", "blur", "veil"):
        values = [getattr(p, field) for p in RAIN_TABLE]
        assert values == sorted(values), field
    assert [p.exposure for p in LOWLIGHT_TABLE] == sorted((p.exposure for p in LOWLIGHT_TABLE), reverse=True)


def test_image_rng_depends_on_all_four_keys_only():
    base = image_rng(0, 5, "fog", 3).integers(0, 2**62)
    assert image_rng(0, 5, "fog", 3).integers(0, 2**62) == base
    for args in ((1, 5, "fog", 3), (0, 6, "fog", 3), (0, 5, "rain", 3), (0, 5, "fog", 4)):
        assert image_rng(*args).integers(0, 2**62) != base
    assert corruption_id("fog") == 1 and corruption_id("lowlight") == 3


# ------------------------------------------------------------------------------------------- errors
def test_unknown_corruption_lists_valid_names():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(UnknownNameError, match="unknown corruption 'snow'; valid names: fog, rain, lowlight"):
        corrupt(img, "snow", 1, rng=0)
    with pytest.raises(UnknownNameError, match="cannot import corruption"):
        get_corruption("no_such_module_xyz:fn")


@pytest.mark.parametrize(
    "image, severity, err, match",
    [
        (np.zeros((8, 8, 3), np.float32), 1, TypeError, "dtype uint8.*float32"),
        (np.zeros((8, 8), np.uint8), 1, ValueError, r"HxWx3.*\(8, 8\)"),
        (np.zeros((8, 8, 4), np.uint8), 1, ValueError, r"\(8, 8, 4\)"),
        (np.zeros((0, 8, 3), np.uint8), 1, ValueError, "at least 1x1"),
        ([[0]], 1, TypeError, "numpy.ndarray"),
        (np.zeros((8, 8, 3), np.uint8), 0, ValueError, "severity must be in 1..5, got 0"),
        (np.zeros((8, 8, 3), np.uint8), 6, ValueError, "severity must be in 1..5, got 6"),
        (np.zeros((8, 8, 3), np.uint8), 2.0, TypeError, "integer in 1..5"),
        (np.zeros((8, 8, 3), np.uint8), True, TypeError, "integer in 1..5"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name, image, severity, err, match):
    with pytest.raises(err, match=match):
        corrupt(image, name, severity, rng=0)
    with pytest.raises(err, match=match):  # the registry functions validate too
        CORRUPTIONS[name](image, severity, np.random.default_rng(0))


def test_rng_argument_types():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="rng must be None, an int seed or a numpy.random.Generator"):
        corrupt(img, "rain", 1, rng="seed")
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        rain(img, 1, 0)
    assert corrupt(img, "lowlight", 1).shape == img.shape  # None: fresh entropy


def test_plugin_corruption_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_corr_plugin.py").write_text(
        "import numpy as np\n"
        "def invert(image, severity, rng):\n    return 255 - image\n"
        "def wrong(image, severity, rng):\n    return image.astype(np.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(corrupt(img, "my_corr_plugin:invert", 2, rng=0), 255 - img)
    with pytest.raises(TypeError, match="returned ndarray float32"):
        corrupt(img, "my_corr_plugin:wrong", 2, rng=0)
    assert corruption_id("my_corr_plugin:invert") == corruption_id("my_corr_plugin:invert") > 3
    sys.modules.pop("my_corr_plugin", None)


def test_package_imports_only_cubdata():
    import subprocess

    code = (
        "import sys, corruptions, corruptions.degrade, corruptions.preview\n"
        "bad = [m for m in ('torch', 'diffloss', 'classifiers', 'analysis') if m in sys.modules]\n"
        "print(bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout
    assert corruptions.__all__


def test_srgb8_table_is_within_rounding_of_exact_encoding():
    from corruptions.lowlight import _SQRT_STEPS, encode_srgb8

    u = np.arange(_SQRT_STEPS + 1) / _SQRT_STEPS
    assert np.diff(linear_to_srgb(u**2) * 255).max() < 0.006  # one table step moves < 0.006 code values
    y = np.random.default_rng(0).random(200_000) ** 3
    exact = np.rint(linear_to_srgb(y) * 255).astype(np.int64)
    fast = encode_srgb8(y).astype(np.int64)
    assert np.abs(exact - fast).max() <= 1 and (exact != fast).mean() < 0.005
    assert encode_srgb8(np.array([-0.5, 0.0, 1.0, 7.0])).tolist() == [0, 0, 255, 255]


# ------------------------------------------------------------------------------------------- registry
def test_checks_are_public():
    assert {"check_severity", "check_image", "SEVERITIES"} <= set(corruptions.__all__)
    assert corruptions.SEVERITIES == (1, 2, 3, 4, 5) and corruptions.check_severity(np.int64(3)) == 3
    with pytest.raises(ValueError, match="HxWx3"):
        corruptions.check_image(np.zeros((4, 4), np.uint8))


def test_register_corruption_is_one_decorator_and_every_list_sees_it():
    """A corruption registered at run time is in the names, the id/table views, the builder's default
    --corruptions and the preview's; ids are unique and tables have five rows."""
    from collections import namedtuple

    from corruptions import degrade, preview, register_corruption

    Row = namedtuple("Row", "amount")
    table = tuple(Row(a) for a in (1, 2, 3, 4, 5))

    @register_corruption("invert_test", table=table, id=77)
    def invert_test(image, severity, rng):
        return 255 - image

    try:
        assert get_corruption_names() == [*NAMES, "invert_test"]
        assert CORRUPTION_IDS["invert_test"] == 77 and SEVERITY_TABLES["invert_test"] == table
        assert corruption_parameters("invert_test", 4) == {"amount": 4}
        img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        assert np.array_equal(corrupt(img, "invert_test", 1, rng=0), 255 - img)
        assert degrade.build_parser().parse_args([]).corruptions == (*NAMES, "invert_test")
        assert preview.build_parser().parse_args([]).corruptions.split(",") == [*NAMES, "invert_test"]
        with pytest.raises(ValueError, match="id 77 is already 'invert_test'"):
            register_corruption("other_test", id=77)(invert_test)
        with pytest.raises(ValueError, match="already registered"):
            register_corruption("fog")(invert_test)
        with pytest.raises(ValueError, match="3 rows"):
            register_corruption("short_test", table=table[:3])(invert_test)
    finally:
        CORRUPTIONS.remove("invert_test")
    assert get_corruption_names() == list(NAMES) and "invert_test" not in CORRUPTION_IDS
