"""Seed replay: view seeds, per-sample parameters and the uint8 ops that use them.

The invariant under test: a (view, sample) pair is augmented to the same pixels whatever batch
it travels in, in whatever order and batch size, because its seed and parameters are pure
functions of (dump seed, view, sample) and the ops are exact integer operations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache.errors import BadInput, CacheMismatch, CacheOutdated
from logitcache.views import FLIP, HEIGHT, LEFT, TOP, WIDTH, Normalize, ViewSpec, pillow_resampler, view_seeds

CROP_SPECS = [
    ViewSpec(kind="crop", size=32, padding=4, flip=True),  # CIFAR
    ViewSpec(kind="crop", size=8, padding=1, flip=False),  # digits
    ViewSpec(kind="crop", size=8, padding=1, flip=True),  # synthetic size 8
]
RESIZED = ViewSpec(kind="resized_crop", size=16, flip=True)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=gen, dtype=torch.int64).to(torch.uint8)


# --------------------------------------------------------------------------- seeds
def test_view_seeds_are_pinned():
    # These values are part of the store format: every cache ever written stores them, and a
    # student replays them. Changing the hash silently invalidates every existing cache.
    assert view_seeds(0, 0, np.arange(4)).tolist() == [595752380, 1109241648, 2468920926, 3503369236]
    assert view_seeds(0, 1, np.arange(4)).tolist() == [2492623918, 2887393311, 4109595479, 3180894935]
    assert view_seeds(7, 3, [0, 1000, 123456]).tolist() == [3500945146, 1941830535, 1676759204]
    assert view_seeds(0, np.array([0, 1, 2]), np.array([5, 5, 5])).tolist() == [3276848851, 3322606496, 3477913884]


def test_view_seeds_shape_and_independence():
    idx = np.arange(2000)
    s = view_seeds(0, 0, idx)
    assert s.dtype == np.uint32 and s.shape == (2000,)
    # Per-element: a sample's seed does not depend on which other samples are asked for.
    assert np.array_equal(view_seeds(0, 0, idx[::-1]), s[::-1])
    assert np.array_equal(view_seeds(0, 0, [1234]), s[1234:1235])
    grid = view_seeds(0, np.arange(4)[:, None], idx[None, :])
    assert grid.shape == (4, 2000)
    assert np.array_equal(grid[0], s)
    # Views, samples and dump seeds give unrelated streams (no shared values beyond chance).
    assert len(np.unique(grid)) > grid.size - 5
    assert (view_seeds(1, 0, idx) == s).mean() < 0.01


def test_view_seeds_refuses_negative_seed():
    with pytest.raises(BadInput, match="seed must be >= 0"):
        view_seeds(-1, 0, [0])


# --------------------------------------------------------------------------- params
@pytest.mark.parametrize("spec", [*CROP_SPECS, RESIZED, ViewSpec(kind="resized_crop", size=8, scale=(0.5, 1.0))],
                         ids=lambda s: s.describe())
def test_params_are_a_pure_function_of_the_seed(spec):
    seeds = view_seeds(3, 1, np.arange(300))
    rng = np.random.default_rng(0)
    hw = rng.integers(spec.size, 3 * spec.size, size=(300, 2)) if spec.kind == "resized_crop" else np.array([spec.size] * 2)
    clean = rng.random(300) < 0.2
    whole = spec.params(seeds, hw, clean)
    assert whole.shape == (300, 7) and whole.dtype == np.int64
    assert np.array_equal(spec.params(seeds, hw, clean), whole)  # no hidden state
    # One at a time, and in a shuffled batch: the same rows.
    hw_rows = np.broadcast_to(hw, (300, 2))
    for j in range(0, 300, 37):
        assert np.array_equal(spec.params(seeds[j : j + 1], hw_rows[j], clean[j]), whole[j : j + 1])
    perm = rng.permutation(300)
    assert np.array_equal(spec.params(seeds[perm], hw_rows[perm], clean[perm]), whole[perm])


@pytest.mark.parametrize("spec", CROP_SPECS, ids=lambda s: s.describe())
def test_crop_params_range(spec):
    seeds = view_seeds(0, 1, np.arange(5000))
    p = spec.params(seeds, (spec.size, spec.size))
    room = 2 * spec.padding + 1
    for axis in (TOP, LEFT):
        assert p[:, axis].min() == 0 and p[:, axis].max() == room - 1  # every offset occurs
    assert (p[:, HEIGHT] == spec.size).all() and (p[:, WIDTH] == spec.size).all()
    if spec.flip:
        assert 0.45 < p[:, FLIP].mean() < 0.55
    else:
        assert (p[:, FLIP] == 0).all()
    clean = spec.params(seeds, (spec.size, spec.size), clean=True)
    assert (clean[:, [TOP, LEFT]] == spec.padding).all() and (clean[:, FLIP] == 0).all()


def test_crop_larger_than_padded_image_is_refused():
    with pytest.raises(BadInput, match="larger than the padded image"):
        ViewSpec(kind="crop", size=40, padding=2).params(np.zeros(1, np.uint32), (32, 32))


def test_resized_crop_boxes_lie_inside_the_image():
    spec = ViewSpec(kind="resized_crop", size=16, scale=(0.08, 1.0))
    rng = np.random.default_rng(1)
    hw = rng.integers(10, 200, size=(4000, 2))
    p = spec.params(view_seeds(0, 2, np.arange(4000)), hw)
    assert (p[:, HEIGHT] >= 1).all() and (p[:, WIDTH] >= 1).all()
    assert (p[:, TOP] >= 0).all() and (p[:, LEFT] >= 0).all()
    assert (p[:, TOP] + p[:, HEIGHT] <= hw[:, 0]).all() and (p[:, LEFT] + p[:, WIDTH] <= hw[:, 1]).all()
    area = p[:, HEIGHT] * p[:, WIDTH] / (hw[:, 0] * hw[:, 1])
    assert area.min() < 0.2 and area.max() > 0.8  # the scale range is used


def test_resized_crop_fallback_is_torchvision_centre_crop():
    # A 20×40 image cannot hold a box of the full area with aspect in [3/4, 4/3]: every try
    # fails and torchvision falls back to the whole height, width clipped to ratio 4/3.
    spec = ViewSpec(kind="resized_crop", size=8, scale=(1.0, 1.0))
    p = spec.params(view_seeds(0, 1, np.arange(50)), (20, 40))
    assert (p[:, [TOP, LEFT, HEIGHT, WIDTH]] == [0, 6, 20, 27]).all()
    tall = spec.params(view_seeds(0, 1, np.arange(50)), (40, 20))  # ratio 1/2 < 3/4
    assert (tall[:, [TOP, LEFT, HEIGHT, WIDTH]] == [6, 0, 27, 20]).all()


def test_resized_crop_clean_view_is_resize_then_centre_crop():
    spec = ViewSpec(kind="resized_crop", size=224, flip=True)
    assert spec.eval_resize == 256  # 224 / 0.875
    p = spec.params(np.arange(3, dtype=np.uint32), (500, 375), clean=True)
    side = round(375 * 224 / 256)
    assert (p[:, :5] == [(500 - side) // 2, (375 - side) // 2, side, side, 0]).all()


# --------------------------------------------------------------------------- apply
@pytest.mark.parametrize("spec", CROP_SPECS, ids=lambda s: s.describe())
def test_clean_crop_view_is_the_original_image(spec):
    images = _images(9, spec.size, spec.size)
    params = spec.params(view_seeds(0, 0, np.arange(9)), (spec.size, spec.size), clean=True)
    assert torch.equal(spec.apply(images, params), images)


def test_crop_matches_pad_and_slice():
    spec = ViewSpec(kind="crop", size=32, padding=4, flip=True)
    images = _images(64, 32, 32)
    params = spec.params(view_seeds(0, 1, np.arange(64)), (32, 32))
    out = spec.apply(images, params)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for j, (top, left, h, w, flip, _, _) in enumerate(params.tolist()):
        want = padded[j, :, top : top + h, left : left + w]
        assert torch.equal(out[j], want.flip(-1) if flip else want)


@pytest.mark.parametrize("spec", [CROP_SPECS[0], RESIZED], ids=lambda s: s.describe())
def test_same_pair_same_pixels_in_any_batch(spec):
    n = 40
    images = _images(n, 32, 32, seed=3)
    seeds = view_seeds(5, 2, np.arange(n))
    clean = np.zeros(n, dtype=bool)
    clean[::7] = True
    ref = torch.cat([spec.apply_each([images[i]], spec.params(seeds[i : i + 1], (32, 32), clean[i])) for i in range(n)])
    rng = np.random.default_rng(0)
    for batch_size in (1, 3, 16, n):
        order = rng.permutation(n)
        for s in range(0, n, batch_size):
            sel = order[s : s + batch_size]
            out = spec.apply(images[sel], spec.params(seeds[sel], (32, 32), clean[sel]))
            assert torch.equal(out, ref[sel])
    # Duplicates in a batch are augmented identically too.
    sel = np.array([4, 4, 9, 4])
    assert torch.equal(spec.apply(images[sel], spec.params(seeds[sel], (32, 32), clean[sel])), ref[sel])


def test_resized_crop_identity_box_is_exact():
    images = _images(4, 16, 16)
    spec = ViewSpec(kind="resized_crop", size=16, flip=False)
    box = np.array([[0, 0, 16, 16, 0]] * 4)
    assert torch.equal(spec.apply(images, box), images)
    # A box of the output size anywhere in a larger image is an exact crop.
    big = _images(2, 30, 25, seed=1)
    sub = spec.apply(big, np.array([[3, 7, 16, 16, 0], [14, 9, 16, 16, 1]]))
    assert torch.equal(sub[0], big[0, :, 3:19, 7:23])
    assert torch.equal(sub[1], big[1, :, 14:30, 9:25].flip(-1))


@settings(max_examples=60, deadline=None)
@given(
    src=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    size=st.integers(1, 24),
    data=st.data(),
)
def test_resized_crop_output_stays_within_the_boxs_pixels(src, size, data):
    h, w = src
    top = data.draw(st.integers(0, h - 1))
    left = data.draw(st.integers(0, w - 1))
    bh = data.draw(st.integers(1, h - top))
    bw = data.draw(st.integers(1, w - left))
    spec = ViewSpec(kind="resized_crop", size=size, flip=False)
    box = np.array([[top, left, bh, bw, 0]])
    image = _images(1, h, w, seed=h * 100 + w)
    out = spec.apply(image, box)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, size, size)
    # Within the range of the pixels of the box (the filter is non-negative, weights sum to 1).
    region = image[0, :, top : top + bh, left : left + bw]
    assert int(out.min()) >= int(region.min()) and int(out.max()) <= int(region.max())
    # A constant image stays exactly constant: the fixed-point weights of an output pixel sum to one.
    value = data.draw(st.integers(0, 255))
    const = torch.full((1, 3, h, w), value, dtype=torch.uint8)
    assert (spec.apply(const, box) == value).all()


@settings(max_examples=40, deadline=None)
@given(
    src=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    size=st.integers(1, 32),
    flip=st.booleans(),
    data=st.data(),
)
def test_resized_crop_is_torchvisions_on_the_same_box_bit_for_bit(src, size, flip, data):
    """The resampling is torchvision's RandomResizedCrop on Pillow images (crop, then Pillow's
    bilinear resize), for tiny, non-square, up- and down-scaled boxes: a cached view is the image
    a torchvision pipeline would have made of that box, and its bytes are Pillow's."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    h, w = src
    top, left = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    bh, bw = data.draw(st.integers(1, h - top)), data.draw(st.integers(1, w - left))
    image = _images(1, h, w, seed=h * 100 + w)
    spec = ViewSpec(kind="resized_crop", size=size, flip=True)
    ours = spec.apply(image, np.array([[top, left, bh, bw, int(flip), 0, 0]]))[0]
    pil = F.resized_crop(Image.fromarray(image[0].permute(1, 2, 0).numpy()), top, left, bh, bw, [size, size])
    theirs = torch.from_numpy(np.array(F.horizontal_flip(pil) if flip else pil)).permute(2, 0, 1)
    assert torch.equal(ours, theirs)


def test_resized_crops_record_their_resampler_and_plain_crops_have_none():
    import PIL

    spec = ViewSpec(kind="resized_crop", size=16)
    assert spec.resampler == pillow_resampler() == f"pillow-{PIL.__version__}-bilinear"
    assert spec.to_json()["resampler"] == spec.resampler
    assert spec.describe() == f"resized_crop(16, scale=(0.08,1), {spec.resampler})+flip"  # what dump and info print
    assert ViewSpec.from_json(spec.to_json()) == spec
    # A store of another Pillow keeps its resampler (it is not replaced by this environment's).
    other = ViewSpec.from_json({**spec.to_json(), "resampler": "pillow-9.5.0-bilinear"})
    assert other.resampler == "pillow-9.5.0-bilinear" and other != spec
    # Plain crops do not resample: their JSON, hence the identity of CIFAR-style stores, is unchanged.
    assert "resampler" not in CROP_SPECS[0].to_json()
    with pytest.raises(BadInput, match="a plain crop does not resample"):
        ViewSpec(kind="crop", size=8, resampler="pillow-9.5.0-bilinear")


def test_views_of_another_resampler_are_not_replayed():
    other = ViewSpec.from_json({**RESIZED.to_json(), "resampler": "pillow-9.5.0-bilinear"})
    with pytest.raises(CacheMismatch, match=rf"resampled by pillow-9.5.0-bilinear, this environment has "
                                             rf"{pillow_resampler()}.*pip install pillow==9.5.0.*re-dump"):
        other.check_replayable()
    assert RESIZED.replay_problem() is None and CROP_SPECS[0].replay_problem() is None
    RESIZED.check_replayable()
    CROP_SPECS[0].check_replayable()


def test_resized_crops_of_the_former_integer_filter_are_refused():
    """A store made before the resampler was recorded holds another filter's views: it is refused
    ("re-dump"), never read as if today's resampler had made it."""
    old = RESIZED.to_json()
    del old["resampler"]
    with pytest.raises(CacheOutdated, match=r"former integer filter.*re-dump it \(the same dump command with --overwrite\)"):
        ViewSpec.from_json(old)


def test_apply_refuses_float_images():
    with pytest.raises(BadInput, match="uint8"):
        CROP_SPECS[0].apply(torch.zeros(1, 3, 32, 32), np.zeros((1, 5), dtype=np.int64))


# --------------------------------------------------------------------------- spec forms
@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("crop:32:4", ViewSpec(kind="crop", size=32, padding=4)),
        ("crop:8", ViewSpec(kind="crop", size=8)),
        ("crop:8:1:noflip", ViewSpec(kind="crop", size=8, padding=1, flip=False)),
        ("resized_crop:224", ViewSpec(kind="resized_crop", size=224)),
        ("resized_crop:96:0.2-1.0:noflip", ViewSpec(kind="resized_crop", size=96, scale=(0.2, 1.0), flip=False)),
    ],
)
def test_parse_and_json_round_trip(text, spec):
    parsed = ViewSpec.parse(text)
    assert parsed == spec
    assert ViewSpec.from_json(parsed.to_json()) == parsed


@pytest.mark.parametrize("text", ["", "crop", "crop:x", "rotate:30", "resized_crop:224:big",
                                  "crop:32:4:junk", "crop:32:4:2", "resized_crop:96:0.1-0.5-1", "noflip"])
def test_parse_errors_name_the_forms(text):
    """Every part is read or refused: nothing after the known ones is silently dropped."""
    with pytest.raises(BadInput, match=r"crop:SIZE\[:PAD\]\[:noflip\] \(PAD 0 if left out\).*flips are on unless :noflip"):
        ViewSpec.parse(text)


def test_parse_keeps_the_spec_checks():
    with pytest.raises(BadInput, match="size must be > 0"):
        ViewSpec.parse("crop:0")


def test_invalid_specs_are_refused():
    with pytest.raises(BadInput, match="unknown augmentation kind"):
        ViewSpec(kind="rotate", size=8)
    with pytest.raises(BadInput, match="size must be > 0"):
        ViewSpec(kind="crop", size=0)


def test_normalize():
    images = _images(2, 4, 4)
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    want = (images.float() / 255 - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    assert torch.equal(norm(images), want)
    floats = images.float()
    assert torch.equal(norm(floats), want) and torch.equal(floats, images.float())  # its input is left alone
