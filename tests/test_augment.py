"""Strong per-sample augmentation and mixed views (logitcache/augment.py): every op is integer
arithmetic whose parameters are a pure function of the view seed, so a view is the same image in
any batch, on any device; mixing partners, λ and boxes follow from the seed alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from logitcache.augment import _TRIVIAL, AutoAugment, _rand_ops, mix_images, mix_params, plan_views, run_plan
from logitcache.errors import BadInput, CacheMismatch
from logitcache.methods._common import cross_entropy, mixed_target
from logitcache.views import ViewSpec, view_seeds

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
POLICIES = ["rand-m9-mstd0.5-inc1", "rand-m9", "rand-m15-n4-mstd1-mmax15-p0.9", "trivial"]
# Every op of both policies, at a random level and sign: (name, level in [0, 10] or bin, sign).
OPS = [("rand", inc, name) for inc in (False, True) for name in _rand_ops(inc)] + [("trivial", 0, j) for j in range(len(_TRIVIAL))]


def _op(kind, inc, name, level: float, sign: int, hw):
    if kind == "rand":
        return _rand_ops(inc)[name](level, sign, hw)
    return _TRIVIAL[name](int(level * 3), sign, hw)


sizes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def _image(seed: int, c: int, h: int, w: int) -> torch.Tensor:
    return torch.randint(0, 256, (c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# --------------------------------------------------------------------------- replay
@settings(max_examples=60, deadline=None)
@given(op=st.sampled_from(OPS), level=st.floats(0, 10), sign=st.sampled_from([-1, 1]), hw=sizes,
       c=st.sampled_from([1, 3]), seed=st.integers(0, 2**32 - 1))
def test_every_op_is_uint8_and_replays_bit_exactly(op, level, sign, hw, c, seed):
    """Tiny and non-square images included: same bytes every time, in a fresh tensor too."""
    step = _op(*op, level, sign, hw)
    plan = [step] if step else []
    image = _image(seed % 1000, c, *hw)
    out = run_plan(image, plan, seed)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert torch.equal(out, run_plan(image.clone(), plan, seed))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(policy=st.sampled_from(POLICIES), hw=sizes, seed=st.integers(0, 2**32 - 1), reprob=st.sampled_from([0.0, 1.0]))
def test_views_replay_whatever_the_batch_and_device(device, policy, hw, seed, reprob):
    """A batch of views equals each view made alone, and the CPU's bytes."""
    size = min(hw)
    spec = ViewSpec(kind="crop", size=size, padding=1, aa=policy, reprob=reprob)
    images = torch.stack([_image(seed % 997 + j, 3, *hw) for j in range(5)])
    seeds = view_seeds(seed, 1, np.arange(5))
    params = spec.params(seeds, hw)
    cpu = spec.apply(images, params)
    alone = torch.cat([spec.apply(images[j : j + 1], params[j : j + 1]) for j in range(5)])
    assert torch.equal(cpu, alone)
    assert torch.equal(spec.apply(images.to(device), params).cpu(), cpu)


def test_plans_are_a_pure_function_of_the_seed_and_differ_between_seeds():
    """Drawn for a batch at once or one by one, a view's plan is the same."""
    aa = AutoAugment.parse("rand-m9-mstd0.5-inc1")
    plans = plan_views(np.arange(2000), (32, 32), aa, 0.0, 0.25)
    assert plans == [plan_views([s], (32, 32), aa, 0.0, 0.25)[0] for s in range(2000)]
    assert len({repr(p) for p in plans}) > 1000  # a quarter have no op, some ops have no argument
    # timm: two layers, each applied with p = 0.5; erasing on a quarter of the views.
    assert 0.9 < np.mean([sum(op != "erase" for op, _ in p) for p in plans]) < 1.1
    assert 0.2 < np.mean([any(op == "erase" for op, _ in p) for p in plans]) < 0.3
    trivial = plan_views(np.arange(2000), (32, 32), AutoAugment.parse("trivial"), 0.0, 0.0)
    assert 0.04 < np.mean([not p for p in trivial]) < 0.10  # the identity is one op of 14


def test_clean_views_are_never_augmented():
    spec = ViewSpec(kind="crop", size=8, padding=1, aa="rand-m30-mmax30-p1", reprob=1.0)
    images = torch.stack([_image(j, 3, 8, 8) for j in range(6)])
    assert torch.equal(spec.apply(images, spec.params(view_seeds(0, 0, np.arange(6)), (8, 8), clean=True)), images)


# --------------------------------------------------------------------------- PIL's definitions
def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


@settings(max_examples=30, deadline=None)
@given(hw=sizes, seed=st.integers(0, 10_000), bits=st.integers(1, 8), threshold=st.integers(0, 256))
def test_integer_ops_equal_pil_where_pil_is_integer(hw, seed, bits, threshold):
    """Equalize, posterize, solarize and invert are PIL's lookup tables exactly."""
    image = _image(seed, 3, *hw)
    pil = _pil(image)
    for plan, want in (
        ([("equalize", ())], ImageOps.equalize(pil)),
        ([("posterize", (bits,))], ImageOps.posterize(pil, bits) if bits < 8 else pil),
        ([("solarize", (threshold,))], ImageOps.solarize(pil, threshold)),
        ([("invert", ())], ImageOps.invert(pil)),
    ):
        assert torch.equal(run_plan(image, plan, 0), _tensor(want)), plan


def test_affine_identity_and_pure_translation_move_pixels_exactly():
    image = _image(3, 3, 9, 13)
    assert torch.equal(run_plan(image, [("affine", (65536, 0, 0, 65536, 0, 0))], 0), image)
    shifted = run_plan(image, [("affine", (65536, 0, 0, 65536, 2 * 65536, 0))], 0)  # source x = x + 2
    assert torch.equal(shifted[:, :, :-2], image[:, :, 2:]) and (shifted[:, :, -2:] == 128).all()


# --------------------------------------------------------------------------- spec
def test_specs_without_the_new_ops_keep_their_json_and_identity():
    plain = ViewSpec(kind="crop", size=32, padding=4)
    assert set(plain.to_json()) == {"kind", "size", "padding", "scale", "ratio", "flip", "eval_resize"}
    strong = ViewSpec(kind="crop", size=32, padding=4, aa="rand-m9-inc1-mstd0.5", reprob=0.25, mixup=0.8)
    assert strong.to_json()["aa"] == "rand-m9-n2-mstd0.5-mmax10-inc1-p0.5"  # one spelling per policy
    assert ViewSpec.from_json(strong.to_json()) == strong
    assert "aa rand-m9-n2-mstd0.5-mmax10-inc1-p0.5 + reprob 0.25 + mixup 0.8" in strong.describe()


@pytest.mark.parametrize(("fields", "needle"), [
    ({"aa": "rand-x9"}, "cannot read --aa"), ({"aa": "auto"}, "cannot read --aa"), ({"aa": "rand-n0"}, "1 <= n <= 15"),
    ({"aa": "trivial", "color_jitter": 0.4}, "--color-jitter is not applied with --aa"),
    ({"reprob": 1.5}, "--reprob must be in [0, 1]"), ({"mixup": -1.0}, "--mixup must be finite and >= 0"),
    ({"mixup_prob": float("nan")}, "--mixup-prob must be in [0, 1]"), ({"color_jitter": -0.1}, "--color-jitter must be in [0, 255]"),
])
def test_bad_augmentation_options_are_refused_naming_the_option(fields, needle):
    with pytest.raises(BadInput, match=None) as e:
        ViewSpec(kind="crop", size=8, **fields)
    assert needle in str(e.value)


def test_a_spec_with_ops_this_version_does_not_know_is_refused():
    with pytest.raises(CacheMismatch, match="uses autoaugment_v9, which this logitcache does not know: upgrade"):
        ViewSpec.from_json({**ViewSpec(kind="crop", size=8).to_json(), "autoaugment_v9": 1})


# --------------------------------------------------------------------------- mixing
def _mix(seeds, samples, clean=None, n=100, **kw):
    kw = {"mixup": 0.8, "cutmix": 1.0, "prob": 1.0, "switch_prob": 0.5, **kw}
    return mix_params(seeds, samples, np.zeros(len(seeds), bool) if clean is None else clean, n, (16, 12), **kw)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**20), size=st.integers(2, 40))
def test_partner_lambda_and_box_follow_from_the_seed_alone(seed, size):
    seeds = view_seeds(seed, 1, np.arange(size))
    samples = np.arange(size) % 7
    whole = _mix(seeds, samples)
    perm = np.random.default_rng(seed).permutation(size)
    part = _mix(seeds[perm], samples[perm])  # another batch composition and order
    for name in ("partner", "partner_seed", "lam", "cut", "box", "weight"):
        assert np.array_equal(getattr(whole, name)[perm], getattr(part, name))
    assert (whole.partner != samples).all() and (whole.partner < 100).all()


def test_mixing_follows_timm_meanings():
    seeds = view_seeds(0, 1, np.arange(20_000))
    samples = np.arange(20_000) % 100
    both = _mix(seeds, samples)
    assert 0.47 < both.cut.mean() < 0.53  # switch probability 0.5
    lam = both.lam[~both.cut]
    assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.005  # Beta(0.8, 0.8)
    assert not _mix(seeds, samples, mixup=0.0).cut.__invert__().any()  # CutMix only
    assert not _mix(seeds, samples, cutmix=0.0).cut.any()
    assert 0.27 < _mix(seeds, samples, prob=0.3).mixed.mean() < 0.33
    assert not _mix(seeds, samples, clean=np.ones(20_000, bool)).mixed.any()


def test_cutmix_lambda_is_the_own_share_of_pixels_and_mixup_the_blend_weight():
    seeds = view_seeds(1, 2, np.arange(200))
    mix = _mix(seeds, np.zeros(200, np.int64))
    own, partner = torch.zeros(200, 1, 16, 12, dtype=torch.uint8), torch.full((200, 1, 16, 12), 255, dtype=torch.uint8)
    rows = np.flatnonzero(mix.mixed)
    out = mix_images(own, partner[rows], mix, rows).double()
    share = 1 - out.mean(dim=(1, 2, 3)) / 255
    np.testing.assert_allclose(share[mix.cut].numpy(), mix.lam[mix.cut], atol=1e-12)
    np.testing.assert_allclose(share[~mix.cut].numpy(), mix.lam[~mix.cut], atol=1 / 255)


def test_true_class_is_the_larger_share_and_ce_takes_the_weighted_pair():
    labels = np.arange(100) % 10
    seeds = view_seeds(0, 1, np.arange(64))
    samples = np.arange(64)
    mix = _mix(seeds, samples)
    true = mix.true_class(labels, samples)
    assert np.array_equal(true, np.where(mix.lam >= 0.5, labels[samples], labels[mix.partner]))
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    own, other, lam = (torch.from_numpy(a) for a in (labels[samples], labels[mix.partner], mix.lam))
    target = mixed_target(torch.from_numpy(true), own, other, lam)
    ce_own = torch.nn.functional.cross_entropy(logits, own, reduction="none")
    ce_other = torch.nn.functional.cross_entropy(logits, other, reduction="none")
    torch.testing.assert_close(cross_entropy(logits, target), (lam * ce_own + (1 - lam) * ce_other).float().mean())
    assert type(target[:3]) is torch.Tensor and type(target == 1) is torch.Tensor  # other uses: plain true classes


# --------------------------------------------------------------------------- end to end
STRONG = {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0}


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory):
    """synthetic:n=64,size=8 with strong augmentation and mixed views, every logit in fp32."""
    from logitcache.dump import DumpConfig, dump

    out = tmp_path_factory.mktemp("mixed") / "c.zarr"
    assert dump(DumpConfig(teacher="resnet8", dataset="synthetic:n=64,size=8", out=str(out), random_init=True, views=2,
                           encoding="full", dtype="fp32", chunk_samples=16, batch_size=16, device="cpu",
                           progress=False, strong=STRONG)).complete
    return out


def test_cache_and_online_teacher_train_the_same_student_on_mixed_views(mixed_cache, tmp_path):
    """The online teacher sees the images the student trains on; the cache stored the teacher's
    logits of the same mixed images (DKD: its true class is the larger share's, in both)."""
    from logitcache.train import TrainConfig, train

    common = dict(student="resnet8", dataset="synthetic:n=64,size=8", method="dkd", epochs=1, device="cpu", workers=0,
                  progress=False, cache=str(mixed_cache))
    train(TrainConfig(out=str(tmp_path / "cache"), **common))
    online = dict(teacher_online=True, teacher="resnet8", random_init_teacher=True, view_seed=0)
    train(TrainConfig(out=str(tmp_path / "online"), **online, **common))
    common.pop("cache")  # and with no cache at all: the views derived, augmented and mixed as the dump did
    train(TrainConfig(out=str(tmp_path / "no_cache"), views=2, strong=STRONG, **online, **common))
    a = torch.load(tmp_path / "cache" / "last.pt", map_location="cpu", weights_only=True)["model"]
    for name in ("online", "no_cache"):
        b = torch.load(tmp_path / name / "last.pt", map_location="cpu", weights_only=True)["model"]
        assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()) < 1e-4


def test_train_with_a_cache_refuses_augmentation_options(run_cli, mixed_cache, tmp_path):
    result = run_cli(["train", "--student", "resnet8", "--dataset", "synthetic:n=64,size=8", "--cache", mixed_cache,
                      "--epochs", "1", "--device", "cpu", "--out", tmp_path / "run", "--aa", "trivial", "--quiet"])
    assert result.code == 2 and result.err.count("\n") == 1 and "a cache replays its own augmentation" in result.err
    assert not (tmp_path / "run").exists()


def test_dump_info_verify_with_strong_augmentation_and_refusal_of_another(run_cli, digits_args, tmp_path):
    out = tmp_path / "c.zarr"
    strong = ["--aa", "trivial", "--reprob", "0.25", "--cutmix", "1.0"]
    result = run_cli(["dump", *digits_args, *strong, "--out", out])
    assert result.code == 0, result.err
    assert "aa trivial + reprob 0.25 + cutmix 1 prob 1" in result.out
    info = run_cli(["info", out])
    assert info.code == 0 and "aa trivial + reprob 0.25" in info.out
    verify = run_cli(["verify", out, "--random-init", "--device", "cpu", "--samples", "40"])
    assert verify.code == 0, verify.out + verify.err
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = run_cli(["dump", *digits_args, "--aa", "rand-m9", "--out", out])
    assert other.code == 2 and other.err.count("\n") == 1 and "augmentation.aa" in other.err, other.err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize(("flags", "needle"), [
    (["--aa", "autoaug"], "cannot read --aa 'autoaug'"),
    (["--aa", "rand-m9", "--color-jitter", "0.4"], "--color-jitter is not applied with --aa"),
    (["--reprob", "2"], "--reprob must be in [0, 1]"),
    (["--mixup-switch-prob", "-0.5", "--mixup", "1"], "--mixup-switch-prob must be in [0, 1]"),
])
def test_bad_augmentation_flags_are_one_line_and_leave_nothing(run_cli, digits_args, tmp_path, flags, needle):
    result = run_cli(["dump", *digits_args, *flags, "--out", tmp_path / "c.zarr"])
    assert result.code == 2 and result.err.startswith("error:") and result.err.count("\n") == 1, result.err
    assert needle in result.err
    assert not (tmp_path / "c.zarr").exists()


# --------------------------------------------------------------------------- views per epoch
def test_info_says_how_many_distinct_views_a_run_of_e_epochs_shows(run_cli, synthetic_cache_for_info):
    three = run_cli(["info", synthetic_cache_for_info, "--no-stats", "--epochs", "3"])
    assert three.code == 0, three.err
    assert ("a run of 3 epochs shows each sample 2 distinct augmented views with --view-policy cycle (a fresh view "
            "each epoch for 2 epochs), 1.8 on average with random") in three.out
    default = run_cli(["info", synthetic_cache_for_info, "--no-stats", "--json"])
    assert json.loads(default.out)["distinct_views"] == {"epochs": 2, "cycle": 2.0, "random": 1.5}
    bad = run_cli(["info", synthetic_cache_for_info, "--epochs", "0"])
    assert bad.code == 2 and "--epochs must be >= 1, got 0" in bad.err


def test_cycle_shows_a_fresh_stored_view_every_epoch_until_they_run_out():
    from logitcache.train import _Views, TrainConfig

    views = _Views(10, None, TrainConfig(student="resnet8", dataset="digits", out="", views=4))
    shown = np.stack([views.for_epoch("cycle", e, 0) for e in range(1, 9)])  # (epochs, samples)
    assert all(len(set(shown[:4, i])) == 4 for i in range(10))  # four epochs, four different views
    assert np.array_equal(shown[4:], shown[:4])  # then they repeat


@pytest.fixture(scope="module")
def synthetic_cache_for_info(make_cache):
    return make_cache(dataset="synthetic:n=64,size=8", chunk_samples=16)


@pytest.mark.parametrize("edit", [{"reprob": "lots"}, {"aa": "rand-q1"}, {"size": None}])
def test_a_malformed_stored_augmentation_is_one_error(edit):
    with pytest.raises(CacheMismatch, match="augmentation is malformed"):
        ViewSpec.from_json({**ViewSpec(kind="crop", size=8).to_json(), **edit})
