"""Loss values pinned in ``pinned_losses.json`` and cross-checked against the reference code.

The ``_reference_*`` functions are straightforward transcriptions of the published losses
(mdistiller ``kd_loss`` / ``dkd_loss`` with its "-1000" trick, logit-standardization-KD
``normalize``, RLD ``rld_loss``, DIST ``dist_kd.py``) and, for LoCa, which has no code, of the
reference's §5.1 formula in probability space. On the non-extreme pinned inputs our methods
must agree with them (rtol 1e-5) and with the stored values, which catch any later drift
(LUD, having no reference code, is only pinned).

The fixture stores its inputs too, so it does not depend on torch's random generator. To
rewrite it after an intended change:
``LOGITCACHE_REGEN_PINNED=1 pytest tests/methods/test_pinned.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from logitcache.methods import compute_loss, get_method, list_methods, resolve_hparams
from logitcache.teacher_view import TeacherView

FIXTURE = Path(__file__).with_name("pinned_losses.json")
REGENERATE = os.environ.get("LOGITCACHE_REGEN_PINNED") == "1"
RTOL, ATOL = 1e-5, 1e-6

# ---------------------------------------------------------------- reference transcriptions


def _normalize(logit):  # logit-standardization-KD / RLD
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def _gt_mask(logits, target):
    return torch.zeros_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 1).bool()


def _other_mask(logits, target):
    return torch.ones_like(logits).scatter_(1, target.reshape(-1).unsqueeze(1), 0).bool()


def _cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def _reference_kd(zs, zt, target, *, ce_weight, kd_weight, temperature, logit_stand, epoch=None):
    loss_ce = ce_weight * F.cross_entropy(zs, target)
    if logit_stand:
        zs, zt = _normalize(zs), _normalize(zt)
    log_pred_student = F.log_softmax(zs / temperature, dim=1)
    pred_teacher = F.softmax(zt / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_ce, kd_weight * loss_kd * temperature**2


def _reference_dkd_parts(zs, zt, target, alpha, beta, temperature, pred_teacher_binary=None):
    gt_mask = _gt_mask(zs, target)
    other_mask = _other_mask(zs, target)
    pred_student = F.softmax(zs / temperature, dim=1)
    pred_teacher = F.softmax(zt / temperature, dim=1)
    pred_student = _cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _cat_mask(pred_teacher, gt_mask, other_mask)
    if pred_teacher_binary is not None:  # dkd+loca: the calibrated binary
        pred_teacher = pred_teacher_binary
    log_pred_student = torch.log(pred_student)
    tckd_loss = (
        F.kl_div(log_pred_student, pred_teacher, reduction="sum")
        * (temperature**2)
        / target.shape[0]
    )
    pred_teacher_part2 = F.softmax(zt / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(zs / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
        * (temperature**2)
        / target.shape[0]
    )
    return alpha * tckd_loss + beta * nckd_loss


def _reference_dkd(
    zs,
    zt,
    target,
    *,
    epoch,
    ce_weight,
    alpha,
    beta,
    temperature,
    warmup,
    logit_stand,
    loca_alpha=None,
):
    loss_ce = ce_weight * F.cross_entropy(zs, target)
    if logit_stand:  # LS's DKD: z-score, then DKD unchanged
        zs, zt = _normalize(zs), _normalize(zt)
    binary = None
    if loca_alpha is not None:
        calibrated = _reference_loca(F.softmax(zt / temperature, dim=1), target, loca_alpha)
        binary = _cat_mask(calibrated, _gt_mask(zs, target), _other_mask(zs, target))
    loss_dkd = min(epoch / warmup, 1.0) * _reference_dkd_parts(
        zs, zt, target, alpha, beta, temperature, binary
    )
    return loss_ce, loss_dkd


def _reference_rld(
    zs_in,
    zt_in,
    target,
    *,
    epoch,
    ce_weight,
    alpha,
    beta,
    temperature,
    scd_temperature,
    warmup,
    logit_stand,
):
    alpha_temperature = temperature if scd_temperature is None else scd_temperature  # --same-t
    loss_ce = ce_weight * F.cross_entropy(zs_in, target)
    zs = _normalize(zs_in) if logit_stand else zs_in
    zt = _normalize(zt_in) if logit_stand else zt_in
    student_gt_mask = _gt_mask(zs, target)
    student_other_mask = _other_mask(zs, target)
    max_index = torch.argmax(zt, dim=1)
    teacher_max_mask = _gt_mask(zt, max_index)
    teacher_other_mask = _other_mask(zt, max_index)
    pred_student = F.softmax(zs / alpha_temperature, dim=1)
    pred_teacher = F.softmax(zt / alpha_temperature, dim=1)
    pred_student = _cat_mask(pred_student, student_gt_mask, student_other_mask)
    pred_teacher = _cat_mask(pred_teacher, teacher_max_mask, teacher_other_mask)
    log_pred_student = torch.log(pred_student)
    scd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="batchmean") * (
        alpha_temperature**2
    )
    mask = zt >= torch.gather(zt, 1, target.unsqueeze(1))
    log_pred_student_part2 = F.log_softmax((zs / temperature).masked_fill(mask, -1e9), dim=1)
    pred_teacher_part2 = F.softmax((zt / temperature).masked_fill(mask, -1e9), dim=1)
    mcd_loss = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="batchmean") * (
        temperature**2
    )
    return loss_ce, min(epoch / warmup, 1.0) * (alpha * scd_loss + beta * mcd_loss)


def _reference_dist(
    zs, zt, target, *, ce_weight, kd_weight, temperature, beta, gamma, logit_stand, epoch=None
):
    def cosine_similarity(a, b, eps=1e-8):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def pearson_correlation(a, b, eps=1e-8):
        return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)

    def inter_class_relation(y_s, y_t):
        return 1 - pearson_correlation(y_s, y_t).mean()

    def intra_class_relation(y_s, y_t):
        return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))

    loss_ce = ce_weight * F.cross_entropy(zs, target)
    if logit_stand:
        zs, zt = _normalize(zs), _normalize(zt)
    y_s = (zs / temperature).softmax(dim=1)
    y_t = (zt / temperature).softmax(dim=1)
    inter_loss = temperature**2 * inter_class_relation(y_s, y_t)
    intra_loss = temperature**2 * intra_class_relation(y_s, y_t)
    return loss_ce, kd_weight * (beta * inter_loss + gamma * intra_loss)


def _reference_loca(probs, target, alpha):
    """Reference §5.1 in probability space: s = α/(1 − p_y + p_k) on mis-instructed rows."""
    out = probs.clone()
    for b in range(probs.shape[0]):
        p, y = probs[b], int(target[b])
        p_k = p.max()
        if p[y] < p_k:
            s = alpha / (1 - p[y] + p_k)
            out[b] = s * p
            out[b, y] = 1 - s * (1 - p[y])
    return out


def _reference_kd_loca(
    zs, zt, target, *, ce_weight, kd_weight, temperature, loca_alpha, logit_stand, epoch=None
):
    loss_ce = ce_weight * F.cross_entropy(zs, target)
    if logit_stand:
        zs, zt = _normalize(zs), _normalize(zt)
    pred_teacher = _reference_loca(F.softmax(zt / temperature, dim=1), target, loca_alpha)
    log_pred_student = F.log_softmax(zs / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_ce, kd_weight * loss_kd * temperature**2


REFERENCES = {
    "kd": _reference_kd,
    "dkd": _reference_dkd,
    "rld": _reference_rld,
    "dist": _reference_dist,
    "loca": _reference_kd_loca,
    "dkd+loca": _reference_dkd,
}

# ---------------------------------------------------------------- fixture


def _inputs() -> dict:
    """Seeded non-extreme inputs: B = 8, C = 10; teacher right on half the samples."""
    gen = torch.Generator().manual_seed(20240501)
    batch, num_classes = 8, 10
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    teacher = 2.5 * torch.randn(batch, num_classes, generator=gen)
    teacher[::2] += 5.0 * F.one_hot(target, num_classes)[::2]
    student = 1.5 * torch.randn(batch, num_classes, generator=gen)

    def rows(t):
        return [[round(float(x), 4) for x in row] for row in t]

    return {
        "student": rows(student),
        "teacher": rows(teacher),
        "target": target.tolist(),
        "topk": 3,
    }


def _cases(name: str) -> list[tuple[str, str, dict, int]]:
    """(case id, encoding, hparams, epoch) pinned for ``name``."""
    cases = [
        ("full-default-e30", "full", resolve_hparams(name), 30),
        ("full-default-e5", "full", resolve_hparams(name), 5),
        ("topk3-default-e30", "topk", resolve_hparams(name), 30),
    ]
    if get_method(name).supports_logit_stand:
        cases.append(("full-ls-e30", "full", resolve_hparams(name, logit_stand=True), 30))
    if name == "rld":
        cases.append(
            (
                "full-scd_t1-e30",
                "full",
                resolve_hparams(name, overrides={"scd_temperature": 1.0}),
                30,
            )
        )
    if name == "dkd":
        cases.append(
            ("full-pair-e30", "full", resolve_hparams(name, preset="resnet56-resnet20"), 30)
        )
    return cases


def _tensors(inputs: dict):
    student = torch.tensor(inputs["student"], dtype=torch.float32)
    teacher = torch.tensor(inputs["teacher"], dtype=torch.float32)
    target = torch.tensor(inputs["target"], dtype=torch.int64)
    return student, teacher, target


def _view(teacher, target, encoding, k):
    if encoding == "full":
        return TeacherView.from_logits(teacher, target)
    values, indices = torch.topk(teacher, k, dim=1)
    lse = torch.logsumexp(teacher, dim=1)
    target_logit = teacher.gather(1, target[:, None])[:, 0]
    return TeacherView.from_topk(values, indices, lse, target_logit, target, teacher.shape[1])


def _compute(inputs: dict) -> dict:
    student, teacher, target = _tensors(inputs)
    values = {}
    for name in list_methods():
        for case, encoding, hparams, epoch in _cases(name):
            view = _view(teacher, target, encoding, inputs["topk"])
            terms = compute_loss(name, student, view, target, epoch=epoch, hparams=hparams)
            values[f"{name}/{case}"] = {k: v.item() for k, v in terms.items()}
    return values


def _load() -> dict:
    if REGENERATE:
        inputs = _inputs()
        data = {
            "about": "Pinned loss values of logitcache.methods; see tests/methods/test_pinned.py.",
            "inputs": inputs,
            "values": _compute(inputs),
        }
        text = json.dumps(data, indent=1)
        # One line per list of numbers keeps the file short and diffable.
        text = re.sub(
            r"\[\s+([-+\d.,e\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text
        )
        FIXTURE.write_text(text + "\n")
    return json.loads(FIXTURE.read_text())


PINNED = _load()
CASE_IDS = [f"{name}/{case}" for name in list_methods() for case, *_ in _cases(name)]


def test_every_method_and_case_is_pinned():
    assert sorted(PINNED["values"]) == sorted(CASE_IDS)


@pytest.fixture(scope="module")
def computed() -> dict:
    return _compute(PINNED["inputs"])


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_matches_pinned_values(case_id, computed):
    computed = computed[case_id]
    expected = PINNED["values"][case_id]
    assert computed.keys() == expected.keys()
    for key in expected:
        assert computed[key] == pytest.approx(expected[key], rel=RTOL, abs=ATOL), (case_id, key)


@pytest.mark.parametrize(
    ("name", "case", "encoding", "hparams", "epoch"),
    [
        pytest.param(name, case, encoding, hp, epoch, id=f"{name}/{case}")
        for name in REFERENCES
        for case, encoding, hp, epoch in _cases(name)
        if encoding == "full"  # the transcriptions take full teacher logits
    ],
)
def test_matches_reference_transcription(name, case, encoding, hparams, epoch):
    student, teacher, target = _tensors(PINNED["inputs"])
    view = TeacherView.from_logits(teacher, target)
    ours = compute_loss(name, student, view, target, epoch=epoch, hparams=hparams)
    ref_ce, ref_kd = REFERENCES[name](student, teacher, target, epoch=epoch, **hparams)
    torch.testing.assert_close(ours["ce"], ref_ce, rtol=RTOL, atol=ATOL)
    ours_kd = sum(v for k, v in ours.items() if k != "ce")
    torch.testing.assert_close(ours_kd, ref_kd, rtol=RTOL, atol=ATOL)


def test_topk_pins_use_the_rebuild():
    # The top-k cases are the same losses on TeacherView's rebuilt logits.
    student, teacher, target = _tensors(PINNED["inputs"])
    view = _view(teacher, target, "topk", PINNED["inputs"]["topk"])
    rebuilt = TeacherView.from_logits(view.logits, target)
    for name in list_methods():
        hp = resolve_hparams(name)
        a = compute_loss(name, student, view, target, epoch=30, hparams=hp)
        b = compute_loss(name, student, rebuilt, target, epoch=30, hparams=hp)
        for key in a:
            torch.testing.assert_close(a[key], b[key])
