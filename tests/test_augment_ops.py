"""The fast integer ops of logitcache/augment.py equal their definitions (tests/augment_reference.py)
bit for bit, on tiny, non-square, flat and one- or three-channel images, at every argument the
policies can produce and beyond; and the views of existing caches stay the same bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logitcache import augment
from logitcache.augment import AutoAugment, plan_views, run_plan, run_pointwise, split_pointwise
from logitcache.views import pil_to_tensor
from tests import augment_reference as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
ONE = 1 << 16


@st.composite
def images(draw, max_side: int = 14) -> np.ndarray:
    """uint8 (C, H, W); a narrow value range at times, so that autocontrast, equalize and contrast
    meet flat channels and few levels."""
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    lo = draw(st.integers(0, 255))
    span = draw(st.sampled_from([0, 1, 3, 255]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(lo, min(lo + span, 255) + 1, (c, h, w)).astype(np.uint8)


coefficient = st.integers(-3 * ONE, 3 * ONE)
blend = st.integers(0, 4096)  # 1/256 steps: factors 0 to 16
OP_ARGS = {
    "invert": st.just(()),
    "autocontrast": st.just(()),
    "equalize": st.just(()),
    "posterize": st.tuples(st.integers(0, 8)),
    "solarize": st.tuples(st.integers(0, 256)),
    "solarize_add": st.tuples(st.integers(0, 110)),
    "brightness": st.tuples(blend),
    "color": st.tuples(blend),
    "contrast": st.tuples(blend),
    "sharpness": st.tuples(blend),
    "affine": st.one_of(
        st.tuples(coefficient, coefficient, coefficient, coefficient, st.integers(-40 * ONE, 40 * ONE), st.integers(-40 * ONE, 40 * ONE)),
        # the policies' own: shear x or y, translation, rotation about the centre
        st.tuples(st.just(ONE), coefficient, st.just(0), st.just(ONE), st.just(0), st.just(0)),
        st.tuples(st.just(ONE), st.just(0), coefficient, st.just(ONE), st.just(0), st.just(0)),
        st.tuples(st.just(ONE), st.just(0), st.just(0), st.just(ONE), st.integers(-40 * ONE, 40 * ONE), st.integers(-40 * ONE, 40 * ONE)),
        # scales, whose coordinates are per column and per row
        st.tuples(coefficient, st.just(0), st.just(0), coefficient, st.integers(-40 * ONE, 40 * ONE), st.integers(-40 * ONE, 40 * ONE)),
        st.tuples(coefficient, coefficient, st.just(0), st.just(ONE), st.just(0), st.integers(-40 * ONE, 40 * ONE)),
        # rows or columns that stay rows or columns, shifted far past the image
        st.tuples(st.just(ONE), st.integers(-(2**33), 2**33), st.just(0), st.just(ONE), st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40)),
        st.tuples(st.just(ONE), st.just(0), st.integers(-(2**33), 2**33), st.just(ONE), st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40)),
        # beyond int32 coordinates (the int64 path)
        st.tuples(*[st.integers(-(2**33), 2**33)] * 4, st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40)),
        st.floats(-180, 180).map(lambda deg: (lambda t: tuple(round(v * ONE) for v in (np.cos(t), np.sin(t), -np.sin(t), np.cos(t))) + (0, 0))(np.radians(deg))),
    ),
}


@st.composite
def ops(draw) -> tuple[str, tuple[int, ...]]:
    name = draw(st.sampled_from(sorted(OP_ARGS)))
    return name, draw(OP_ARGS[name])


@settings(max_examples=400, deadline=None)
@given(image=images(), op=ops())
@example(image=np.full((3, 1, 1), 7, np.uint8), op=("affine", (ONE, 0, 0, ONE, ONE // 2, ONE // 2)))
@example(image=np.arange(12, dtype=np.uint8).reshape(1, 3, 4) * 20, op=("sharpness", (4096,)))
@example(image=np.arange(60, dtype=np.uint8).reshape(3, 4, 5) * 4, op=("affine", (2**31, 3, -5, 2**31, 2**38, -(2**38))))
def test_every_op_equals_its_definition(image, op):
    given = image.copy()
    got = run_plan(torch.from_numpy(image), [op], 0)
    assert got.dtype == torch.uint8 and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), ref.run_plan(image, [op], 0), err_msg=repr(op))
    np.testing.assert_array_equal(image, given)  # the input is never written


@pytest.mark.parametrize("matrix", [(3 * ONE, 2**22, 5, 2 * ONE), (ONE // 3, 7, 2**22, 3 * ONE)], ids=["tall", "wide"])
def test_warps_of_long_thin_images_stay_in_range(matrix):
    """A coordinate bound from the longer side: on a tall or wide image a shear term reaches 2**32
    (and wrapped to a pixel inside in int32) while the shorter side's bound stays small."""
    tall = np.random.default_rng(0).integers(0, 256, (1, 3001, 3)).astype(np.uint8)
    image = tall if matrix[1] > matrix[2] else np.ascontiguousarray(tall.transpose(0, 2, 1))
    op = ("affine", (*matrix, 0, 0))
    np.testing.assert_array_equal(run_plan(torch.from_numpy(image), [op], 0).numpy(), ref.run_plan(image, [op], 0))


@settings(max_examples=60, deadline=None)
@given(image=images(), plan=st.lists(ops(), min_size=2, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_chains_of_ops_equal_their_definitions(image, plan, seed):
    h, w = image.shape[1:]
    plan = plan + [("erase", (seed % h, seed % w, h - seed % h, w - seed % w))]
    np.testing.assert_array_equal(run_plan(torch.from_numpy(image), plan, seed).numpy(), ref.run_plan(image, plan, seed))


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0)))


@settings(max_examples=300, deadline=None)
@given(image=images(), op=st.sampled_from(sorted(augment._POINTWISE)).flatmap(lambda name: OP_ARGS[name].map(lambda a: (name, a))))
def test_pointwise_ops_on_pillow_images_equal_their_definitions(image, op):
    """A folder's view runs its leading pointwise ops as a Pillow image (its statistics from Pillow)."""
    got = pil_to_tensor(run_pointwise(_pil(image), [op]))
    np.testing.assert_array_equal(got.numpy(), ref.run_plan(image, [op], 0), err_msg=repr(op))


@settings(max_examples=60, deadline=None)
@given(image=images(), plan=st.lists(ops(), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_a_plan_split_between_pillow_and_the_tensor_equals_its_definition(image, plan, seed):
    pointwise, rest = split_pointwise(plan)
    assert pointwise + rest == plan and all(name in augment._POINTWISE for name, _ in pointwise)
    got = run_plan(pil_to_tensor(run_pointwise(_pil(image), pointwise)), rest, seed)
    np.testing.assert_array_equal(got.numpy(), ref.run_plan(image, plan, seed))


POLICIES = [("rand-m9-mstd0.5-inc1", 0.0, 0.25), ("rand-m9-n3-mstd1-p0.9", 0.0, 0.0), ("trivial", 0.0, 0.5), (None, 0.4, 0.25)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aa, jitter, reprob", POLICIES)
def test_policy_views_equal_their_definitions(device, aa, jitter, reprob):
    policy = AutoAugment.parse(aa) if aa else None
    image = np.random.default_rng(1).integers(0, 256, (3, 19, 26)).astype(np.uint8)
    for seed, plan in enumerate(plan_views(np.arange(40), (19, 26), policy, jitter, reprob)):
        got = run_plan(torch.from_numpy(image).to(device), plan, seed).cpu().numpy()
        np.testing.assert_array_equal(got, ref.run_plan(image, plan, seed), err_msg=repr(plan))


# The sha256 of 200 views per policy of one 48×64 photo-like image, as the ops made them at
# git d28a21e (format 3). Stored caches hold only seeds: if these bytes change, every cache made
# with strong augmentation would replay other images than its teacher saw.
PINNED = {
    "rand-m9-mstd0.5-inc1": "5d8e6405bacc19c82893b25ee84c35816952da5ce80a75951eca7f5e6cd2caa5",
    "rand-m9-n3-mstd1-p0.9": "6b9fc96edeab7a6de779d097ada2a585742bc6f3273c8bb773d7314a8150825e",
    "trivial": "296e49c1378573949a28e2a5f520d89570e8e7436805262a9b5eb0e86350c865",
    "jitter0.4": "286132dc0125ae1a461ee096e5f4fa70ebc6f934ebe274838c9d185fc3772fa6",
}


def _photo() -> torch.Tensor:
    """Blocks of noise with a gradient over them, in integers only (no resampler whose rounding
    could move between versions)."""
    blocks = np.random.default_rng(7).integers(0, 192, (3, 6, 8))
    y, x = np.mgrid[0:48, 0:64]
    return torch.from_numpy((blocks[:, y // 8, x // 8] + (y + x) % 64).astype(np.uint8))


@pytest.mark.parametrize("name", sorted(PINNED))
def test_views_of_existing_caches_keep_their_bytes(name):
    policy = None if name.startswith("jitter") else AutoAugment.parse(name)
    jitter = 0.4 if policy is None else 0.0
    image, digest = _photo(), hashlib.sha256()
    for seed, plan in enumerate(plan_views(np.arange(200), (48, 64), policy, jitter, 0.25)):
        digest.update(run_plan(image, plan, seed).numpy().tobytes())
    assert digest.hexdigest() == PINNED[name]


def test_the_smoothing_divides_by_13_exactly_at_every_reachable_total():
    """_sharpness divides (3×3 sum + 4 centres + 6) by 13 as a multiply-shift: exact below 6,564,
    and the largest total of bytes is 13·255 + 6."""
    totals = np.arange(13 * 255 + 7)
    assert np.array_equal((totals * 5042) >> 16, totals // 13)
    assert ((6564 * 5042) >> 16) != 6564 // 13  # and not far beyond
