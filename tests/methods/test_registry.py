"""The method registry: listing, lookup, registration checks and ``resolve_hparams``."""

from __future__ import annotations

import pytest
from torch import Tensor

from logitcache import methods
from logitcache.errors import BadInput, UnknownName
from logitcache.methods import (
    compute_loss,
    get_method,
    list_methods,
    register_method,
    resolve_hparams,
    resolve_method,
)
from logitcache.methods._registry import METHODS
from logitcache.teacher_view import TeacherView

from .cases import logits_pair, make_view

ALL = ["ce", "kd", "rkl", "jsd", "dkd", "loca", "dkd+loca", "rld", "lud", "dist"]


def test_every_method_is_registered_in_order():
    assert list_methods() == ALL
    assert list_methods("dkd*") == ["dkd", "dkd+loca"]
    assert set(methods.__all__) >= {
        "MethodInfo",
        "compute_loss",
        "get_method",
        "list_methods",
        "register_method",
        "resolve_hparams",
    }


def test_unknown_method_suggests_close_names():
    with pytest.raises(UnknownName, match="did you mean dkd"):
        get_method("dkdd")


def test_only_ce_runs_without_a_teacher():
    assert [n for n in ALL if not get_method(n).needs_teacher] == ["ce"]
    student, teacher, target = logits_pair(4, 10)
    view = make_view(teacher, target, "full")
    # ce never sees the view, whatever is passed.
    assert compute_loss("ce", student, view, target, epoch=1, hparams={}).keys() == {"ce"}
    assert compute_loss("ce", student, None, target, epoch=1, hparams={}).keys() == {"ce"}
    with pytest.raises(BadInput, match="needs a teacher"):
        compute_loss("kd", student, None, target, epoch=1, hparams={})


def test_compute_loss_rejects_unknown_hparams():
    student, teacher, target = logits_pair(4, 10)
    view = make_view(teacher, target, "full")
    with pytest.raises(BadInput, match="betta"):
        compute_loss("dkd", student, view, target, epoch=1, hparams={"betta": 1.0})


def test_epoch_is_one_based():
    student, teacher, target = logits_pair(4, 10)
    view = make_view(teacher, target, "full")
    with pytest.raises(BadInput, match="1-based"):
        compute_loss("dkd", student, view, target, epoch=0, hparams={})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("kd", {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0, "logit_stand": False}),
        (
            "dkd",
            {
                "ce_weight": 1.0,
                "alpha": 1.0,
                "beta": 8.0,
                "temperature": 4.0,
                "warmup": 20,
                "logit_stand": False,
            },
        ),
        (
            "rld",
            {
                "ce_weight": 1.0,
                "alpha": 1.0,
                "beta": 8.0,
                "temperature": 4.0,
                "scd_temperature": None,
                "warmup": 20,
                "logit_stand": False,
            },
        ),
        (
            "dist",
            {
                "ce_weight": 1.0,
                "kd_weight": 2.0,
                "temperature": 4.0,
                "beta": 1.0,
                "gamma": 1.0,
                "logit_stand": False,
            },
        ),
        (
            "loca",
            {
                "ce_weight": 0.1,
                "kd_weight": 0.9,
                "temperature": 4.0,
                "loca_alpha": 0.9,
                "logit_stand": False,
            },
        ),
        (
            "dkd+loca",
            {
                "ce_weight": 1.0,
                "alpha": 1.0,
                "beta": 8.0,
                "temperature": 4.0,
                "warmup": 20,
                "loca_alpha": 0.9,
                "logit_stand": False,
            },
        ),
        (
            "lud",
            {
                "ce_weight": 1.0,
                "cdl_weight": 2.0,
                "sdl_weight": 2.0,
                "t_min": 2.0,
                "t_max": 6.0,
                "rank_strength": 0.1,
            },
        ),
        ("rkl", {"ce_weight": 0.1, "rkl_weight": 0.9, "temperature": 4.0}),
        ("jsd", {"ce_weight": 0.0, "jsd_weight": 1.0, "beta": 0.5, "temperature": 1.0}),
        ("ce", {}),
    ],
)
def test_published_defaults(name, expected):
    assert get_method(name).defaults() == expected
    assert resolve_hparams(name) == expected


def test_named_pair_preset():
    hp = resolve_hparams("dkd", preset="resnet56-resnet20")
    assert hp["beta"] == 2.0 and hp["alpha"] == 1.0 and hp["logit_stand"] is False


@pytest.mark.parametrize(
    ("teacher", "student", "beta"),
    [
        ("resnet32x4", "resnet8x4", 8.0),
        ("wrn_40_2", "ShuffleV1", 8.0),
        ("vgg13", "MobileNetV2", 6.0),
        ("ResNet50", "MobileNetV2", 8.0),
        ("vgg13", "vgg8", 6.0),
        ("resnet110", "resnet20", 2.0),
    ],
)
def test_auto_preset_picks_the_pair(teacher, student, beta):
    hp = resolve_hparams("dkd", preset="auto", teacher=teacher, student=student)
    assert hp["beta"] == beta
    # dkd+loca runs on DKD's published settings.
    assert (
        resolve_hparams("dkd+loca", preset="auto", teacher=teacher, student=student)["beta"] == beta
    )


def test_auto_preset_without_a_pair_changes_nothing():
    assert resolve_hparams(
        "dkd", preset="auto", teacher="resnet8", student="resnet20"
    ) == resolve_hparams("dkd")
    assert resolve_hparams("dkd", preset="auto") == resolve_hparams("dkd")
    assert resolve_hparams("kd", preset="auto", teacher="vgg13", student="vgg8") == resolve_hparams(
        "kd"
    )


def test_logit_stand_applies_the_ls_preset():
    assert resolve_hparams("kd", logit_stand=True) == {
        "ce_weight": 0.1,
        "kd_weight": 9.0,
        "temperature": 2.0,
        "logit_stand": True,
    }
    dkd = resolve_hparams("dkd", logit_stand=True)
    assert (dkd["alpha"], dkd["beta"], dkd["temperature"], dkd["logit_stand"]) == (
        9.0,
        72.0,
        2.0,
        True,
    )
    assert dkd["ce_weight"] == 1.0 and dkd["warmup"] == 20
    rld = resolve_hparams("rld", logit_stand=True)
    assert (rld["alpha"], rld["beta"], rld["temperature"], rld["scd_temperature"]) == (
        9.0,
        72.0,
        2.0,
        None,
    )
    loca = resolve_hparams("dkd+loca", logit_stand=True)
    assert (loca["alpha"], loca["beta"], loca["temperature"], loca["loca_alpha"]) == (
        9.0,
        72.0,
        2.0,
        0.9,
    )
    assert resolve_hparams("dist", logit_stand=True) == {
        **resolve_hparams("dist"),
        "logit_stand": True,
    }


def test_logit_stand_with_auto_prefers_the_ls_pair():
    # res56 -> res20 under LS: τ = 3, λ_KD = 18, base β = 2 (LS authors' logs).
    hp = resolve_hparams(
        "dkd", preset="auto", logit_stand=True, teacher="resnet56", student="resnet20"
    )
    assert (hp["temperature"], hp["alpha"], hp["beta"], hp["logit_stand"]) == (
        3.0,
        18.0,
        36.0,
        True,
    )
    kd = resolve_hparams(
        "kd", preset="auto", logit_stand=True, teacher="ResNet50", student="MobileNetV2"
    )
    assert (kd["temperature"], kd["kd_weight"], kd["ce_weight"]) == (3.0, 1.0, 0.1)
    # No LS run published for this pair: the generic LS setting with the pair's β, scaled.
    hp = resolve_hparams(
        "dkd", preset="auto", logit_stand=True, teacher="wrn_40_2", student="ShuffleV1"
    )
    assert (hp["temperature"], hp["alpha"], hp["beta"]) == (2.0, 9.0, 72.0)
    # No pair preset at all: the generic "ls" preset stays.
    hp = resolve_hparams(
        "rld", preset="auto", logit_stand=True, teacher="resnet56", student="resnet20"
    )
    assert hp == resolve_hparams("rld", logit_stand=True)


def test_logit_stand_falls_back_to_the_plain_pair():
    @register_method(
        "_test_fallback", presets={"ls": {"logit_stand": True, "scale": 2.0}, "a-b": {"scale": 3.0}}
    )
    def fallback(
        student_logits: Tensor,
        teacher: TeacherView,
        target: Tensor,
        *,
        epoch: int,
        scale: float = 1.0,
        logit_stand: bool = False,
    ) -> dict[str, Tensor]:
        """A test method."""
        return {"ce": scale * student_logits.sum()}

    try:
        hp = resolve_hparams(
            "_test_fallback", preset="auto", logit_stand=True, teacher="a", student="b"
        )
        assert hp == {"scale": 3.0, "logit_stand": True}
    finally:
        del METHODS._items["_test_fallback"]


def test_logit_stand_is_refused_where_undefined():
    with pytest.raises(
        BadInput, match="logit standardization is not defined for lud; drop --logit-stand"
    ):
        resolve_hparams("lud", logit_stand=True)
    with pytest.raises(BadInput, match="not defined for ce"):
        resolve_hparams("ce", logit_stand=True)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(BadInput) as err:
        resolve_hparams("dkd", preset="resnet56-resnet2")
    message = str(err.value)
    assert "unknown preset 'resnet56-resnet2' for dkd" in message
    assert "resnet56-resnet20" in message and "ls:vgg13-vgg8" in message and "auto" in message


def test_resolve_method_names_the_preset_and_where_each_value_came_from():
    r = resolve_method("dkd", preset="auto", logit_stand=True, teacher="resnet56", student="resnet20",
                       overrides={"temperature": "3"})
    assert r.values == resolve_hparams("dkd", preset="auto", logit_stand=True, teacher="resnet56",
                                       student="resnet20", overrides={"temperature": "3"})
    assert r.preset == "ls:resnet56-resnet20"
    pair = get_method("dkd").presets["ls:resnet56-resnet20"]
    for key in r.values:
        expected = ("--set" if key == "temperature" else f"preset {r.preset}" if key in pair
                    else "ls" if key in {*get_method("dkd").presets["ls"], "logit_stand"} else "default")
        assert r.sources[key] == expected, key
    none = resolve_method("dkd", preset="auto", teacher="resnet8", student="resnet8")
    assert none.preset is None and set(none.sources.values()) == {"default"}


@pytest.mark.parametrize("preset", ["resnet56-resnet20", "ls:resnet56-resnet20"])
def test_a_pair_preset_of_other_models_is_refused_unless_forced(preset):
    with pytest.raises(BadInput, match=f"--preset {preset} is the published setting of the pair resnet56-resnet20, "
                                       "but this run distills resnet110 into resnet20 .*--force-preset"):
        resolve_method("dkd", preset=preset, teacher="resnet110", student="resnet20")
    forced = resolve_method("dkd", preset=preset, teacher="resnet110", student="resnet20", force_preset=True)
    assert forced.preset == preset and forced.values["beta"] == get_method("dkd").presets[preset]["beta"]
    # Its own pair, the generic "ls" preset, or no known pair at all: nothing to refuse.
    assert resolve_method("dkd", preset=preset, teacher="resnet56", student="resnet20").preset == preset
    assert resolve_method("dkd", preset="ls", teacher="resnet110", student="resnet20").preset == "ls"
    assert resolve_method("dkd", preset=preset).preset == preset


def test_overrides_come_last_and_are_coerced():
    hp = resolve_hparams(
        "dkd",
        preset="vgg13-vgg8",
        logit_stand=True,
        overrides={"beta": "2", "warmup": "10", "logit_stand": "no", "alpha": 3},
    )
    assert hp["beta"] == 2.0 and isinstance(hp["beta"], float)
    assert hp["warmup"] == 10 and isinstance(hp["warmup"], int)
    assert hp["logit_stand"] is False
    assert hp["alpha"] == 3.0 and isinstance(hp["alpha"], float)
    assert set(hp) == set(get_method("dkd").defaults())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("NO", False),
    ],
)
def test_bool_overrides(text, value):
    assert resolve_hparams("kd", overrides={"logit_stand": text})["logit_stand"] is value


def test_optional_overrides():
    assert resolve_hparams("rld", overrides={"scd_temperature": "1"})["scd_temperature"] == 1.0
    assert resolve_hparams("rld", overrides={"scd_temperature": "none"})["scd_temperature"] is None
    assert resolve_hparams("rld", overrides={"scd_temperature": None})["scd_temperature"] is None


def test_unknown_hparam_error_lists_valid_keys():
    with pytest.raises(BadInput) as err:
        resolve_hparams("dkd", overrides={"betta": "2"})
    assert str(err.value).startswith(
        "unknown hyper-parameter 'betta' for dkd: valid are alpha, beta, ce_weight, logit_stand, "
        "temperature, warmup"
    )
    assert "did you mean 'beta'" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "expects"),
    [
        ("beta", "two", "a finite float"),
        ("beta", "nan", "a finite float"),
        ("beta", True, "a finite float"),
        ("warmup", "2.5", "an int"),
        ("warmup", 2.5, "an int"),
        ("logit_stand", "maybe", "a bool"),
        ("logit_stand", 2, "a bool"),
        ("temperature", None, "a finite float"),
    ],
)
def test_bad_override_values_name_key_and_type(key, value, expects):
    with pytest.raises(BadInput) as err:
        resolve_hparams("dkd", overrides={key: value})
    assert f"hyper-parameter {key!r} of dkd expects {expects}" in str(err.value)


def test_integral_float_is_accepted_for_int():
    assert resolve_hparams("dkd", overrides={"warmup": 5.0})["warmup"] == 5


def test_resolve_returns_a_fresh_dict():
    first = resolve_hparams("dkd")
    first["beta"] = -1
    assert resolve_hparams("dkd")["beta"] == 8.0


def test_presets_are_read_only_and_valid():
    for name in list_methods():
        info = get_method(name)
        keys = set(info.defaults())
        for preset, values in info.presets.items():
            assert set(values) <= keys, (name, preset)
            with pytest.raises(TypeError):
                values["x"] = 1  # type: ignore[index]
        with pytest.raises(TypeError):
            info.presets["x"] = {}  # type: ignore[index]


def _good(
    student_logits: Tensor, teacher: TeacherView, target: Tensor, *, epoch: int, w: float = 1.0
) -> dict[str, Tensor]:
    """Good."""
    return {"ce": w * student_logits.sum()}


def test_registration_rejects_duplicates_and_bad_signatures():
    with pytest.raises(ValueError, match="twice"):
        register_method("kd")(_good)

    def no_epoch(
        student_logits: Tensor, teacher: TeacherView, target: Tensor, *, w: float = 1.0
    ) -> dict[str, Tensor]:
        """Doc."""
        return {}

    def no_default(
        student_logits: Tensor, teacher: TeacherView, target: Tensor, *, epoch: int, w: float
    ) -> dict[str, Tensor]:
        """Doc."""
        return {}

    def tensor_param(
        student_logits: Tensor,
        teacher: TeacherView,
        target: Tensor,
        *,
        epoch: int,
        w: Tensor = None,
    ) -> dict[str, Tensor]:
        """Doc."""
        return {}

    def no_doc(
        student_logits: Tensor, teacher: TeacherView, target: Tensor, *, epoch: int
    ) -> dict[str, Tensor]:
        return {}

    for fn, message in [
        (no_epoch, "'epoch'"),
        (no_default, "needs a default"),
        (tensor_param, "must be annotated"),
        (no_doc, "docstring"),
    ]:
        with pytest.raises(ValueError, match=message):
            register_method("_test_bad")(fn)
        assert "_test_bad" not in list_methods()
    with pytest.raises(ValueError, match="unknown key"):
        register_method("_test_bad", presets={"p": {"x": 1}})(_good)
    with pytest.raises(ValueError, match="reserved"):
        register_method("_test_bad", presets={"auto": {"w": 1.0}})(_good)
    assert "_test_bad" not in list_methods()


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("kd", {"temperature": 0}, "temperature must be > 0"),
        ("loca", {"loca_alpha": 1.0}, r"loca_alpha must lie in \(0, 1\)"),
        ("lud", {"t_min": 5.0, "t_max": 3.0}, "t_max"),
        ("rld", {"scd_temperature": -1.0}, "scd_temperature must be > 0"),
        ("rkl", {"temperature": 0}, "temperature must be > 0"),
        ("jsd", {"temperature": -1.0}, "temperature must be > 0"),
    ],
)
def test_invalid_values_are_refused_when_used(name, overrides, message):
    student, teacher, target = logits_pair(4, 10)
    view = make_view(teacher, target, "full")
    with pytest.raises(BadInput, match=message):
        compute_loss(
            name, student, view, target, epoch=1, hparams=resolve_hparams(name, overrides=overrides)
        )


def test_loss_terms_are_named_per_method():
    student, teacher, target = logits_pair(4, 10)
    view = make_view(teacher, target, "full")
    keys = {n: set(compute_loss(n, student, view, target, epoch=1, hparams={})) for n in ALL}
    assert keys == {
        "ce": {"ce"},
        "kd": {"ce", "kd"},
        "rkl": {"ce", "rkl"},
        "jsd": {"ce", "jsd"},
        "loca": {"ce", "kd"},
        "dkd": {"ce", "tckd", "nckd"},
        "dkd+loca": {"ce", "tckd", "nckd"},
        "rld": {"ce", "scd", "mcd"},
        "lud": {"ce", "cdl", "sdl"},
        "dist": {"ce", "inter", "intra"},
    }
