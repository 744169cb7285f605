"""Sampled encoding: N classes drawn with replacement from the teacher's softmax at T, as counts.

The RS-KD cache of Anshumann et al. (ACL 2025, "Sparse Logit Sampling"): ``counts / N`` is an
unbiased estimate of ``softmax(z / T)``, so a KD loss that is linear in the teacher's
distribution has, in expectation over the draws, exactly the full-logit gradient, at top-k's
size. Top-k is biased: whatever is done with the mass it does not store distorts the target.

Stored per (view, sample): the sample indices (``sample_indices_packed``, ceil(log2 C) bits each
as top-k's, or ``sample_indices`` in whole integers in a store of format 2) and ``sample_counts``
in ``min(N, C)`` slots, the distinct drawn classes in increasing order with how often each was
drawn, empty slots last as index 0 with count 0; ``lse`` (logsumexp of the logits at T = 1) and ``target_logit`` (fp32), so
the true class's probability is exact as in the other encodings.

The draws are reproducible from the stored view seed alone, on any device and in any batch:
draw j of a row uses the uniform ``u_j`` = the top 24 bits of the counter-based hash of (view
seed, ``DRAW_STREAM``, j), divided by 2**24 (exact in fp32), and picks the class where
``u_j · cdf[C-1]`` falls in the fp32 ``cdf = cumsum(softmax(z / T))`` (inverse CDF, torch ops on
the teacher's device). A uniform within float noise of a CDF boundary can pick the neighbouring
class on another device or batch; ``verify`` accepts exactly those draws moving (see
:func:`feasible_counts`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ...teacher_view import TeacherView
from ..._seeds import _hash
from ._base import Encoding, Field, register_encoding, require_finite

DRAW_STREAM = 0x5A4D  # hash word that separates the draws' uniforms from the augmentation's streams
_UNIFORM_BITS = 24  # fp32 holds every multiple of 2**-24 in [0, 1) exactly


def draw_uniforms(seeds: np.ndarray, draws: int) -> np.ndarray:
    """(B, draws) float32 uniforms in [0, 1) of each row's view seed; a pure function of the seed."""
    words = _hash(np.asarray(seeds, dtype=np.uint64)[:, None], DRAW_STREAM, np.arange(draws, dtype=np.uint64)[None, :])
    return ((words >> np.uint64(64 - _UNIFORM_BITS)).astype(np.float32) * np.float32(2.0**-_UNIFORM_BITS))


def tempered_cdf(logits: Tensor, temperature: float) -> Tensor:
    """(B, C) fp32 cumulative sum of ``softmax(z / T)`` on the logits' device."""
    return torch.softmax(logits.float() / temperature, dim=1).cumsum(dim=1)


def inverse_cdf(cdf: Tensor, uniforms: Tensor) -> Tensor:
    """(B, draws) int64 classes: for each uniform, the first class whose CDF exceeds ``u · cdf[C-1]``.

    Scaling by the row total keeps every draw inside the row when fp32 rounding leaves the last
    CDF entry off 1; classes of probability 0 (a flat CDF step) are never drawn.
    """
    return _classes_at(cdf, uniforms * cdf[:, -1:])


def _classes_at(cdf: Tensor, x: Tensor) -> Tensor:
    # x can reach the row total itself (u · total rounding up, or a tolerance added): the last
    # class that adds mass is the one meant, never a class past it.
    last = torch.searchsorted(cdf, cdf[:, -1:].contiguous(), right=False)
    return torch.minimum(torch.searchsorted(cdf, x, right=True), last)


def count_draws(classes: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """(B, draws) classes -> (B, slots) distinct classes ascending and their counts, 0-padded.

    Works on the draws alone (sort and run lengths), so the cost does not grow with C.
    """
    ordered = classes.sort(dim=1).values
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = starts.long().cumsum(dim=1) - 1  # run number of each draw, < min(draws, C) = slots
    indices = torch.zeros(ordered.shape[0], slots, dtype=torch.int64, device=ordered.device)
    indices.scatter_(1, slot, ordered)  # every draw of a run writes the same class
    counts = torch.zeros_like(indices).scatter_add_(1, slot, torch.ones_like(ordered))
    return indices, counts


def feasible_counts(cdf: Tensor, uniforms: Tensor, dense_counts: Tensor, tolerance: float) -> Tensor:
    """(B,) bool: could these dense (B, C) counts come from the draws if the CDF moved by ``tolerance``?

    Each draw may land on any class between the ones its uniform picks at ``u·total ∓ tolerance``;
    the counts are feasible when every class holds at least the draws that can land nowhere
    else, at most the draws that can land on it, and all ``draws`` in total. ``verify`` uses it:
    a replay on another device or batch moves only draws that close to a CDF boundary.
    """
    x = uniforms * cdf[:, -1:]
    lo, hi = _classes_at(cdf, x - tolerance), _classes_at(cdf, x + tolerance)
    ones = torch.ones_like(lo)
    # Draws that may land on class c: those with lo <= c minus those with hi < c (cumulative counts,
    # no (B, draws, C) tensor).
    lo_le = torch.zeros_like(dense_counts).scatter_add_(1, lo, ones).cumsum(dim=1)
    at_hi = torch.zeros_like(dense_counts).scatter_add_(1, hi, ones)
    hi_lt = at_hi.cumsum(dim=1) - at_hi
    may = lo_le - hi_lt
    must = torch.zeros_like(dense_counts).scatter_add_(1, lo, (lo == hi).long())
    within = (dense_counts >= must) & (dense_counts <= may)
    return within.all(dim=1) & (dense_counts.sum(dim=1) == uniforms.shape[1])


@register_encoding("sampled")
class SampledEncoding(Encoding):
    @property
    def draws(self) -> int:
        return self.info.samples

    @property
    def slots(self) -> int:
        """At most min(N, C) distinct classes can be drawn."""
        return min(self.draws, self.num_classes)

    def fields(self) -> list[Field]:
        return [
            self.index_field("sample_indices", self.slots),
            Field("sample_counts", (self.slots,), "uint8" if self.draws <= 255 else "uint16"),
            Field("lse", (), "float32"),
            Field("target_logit", (), "float32"),
        ]

    def uniforms(self, seeds: np.ndarray, device: torch.device | str) -> Tensor:
        """(B, N) fp32 uniforms of each row's draws, on ``device``."""
        return torch.from_numpy(draw_uniforms(seeds, self.draws)).to(device)

    def encode(self, logits: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
        raise TypeError("the sampled encoding draws from the view seeds: call encode_pairs(logits, labels, seeds)")

    def encode_pairs(self, logits: Tensor, labels: Tensor, seeds: np.ndarray) -> dict[str, np.ndarray]:
        cpu = logits.float().cpu()  # the scalars on the CPU, as the other encodings compute them
        lse, target = torch.logsumexp(cpu, dim=1), cpu.gather(1, labels.long()[:, None])[:, 0]
        # Refused before drawing: a -inf class is never drawn (probability 0), the rest reaches lse.
        require_finite("sampled", lse, target)
        classes = inverse_cdf(tempered_cdf(logits, self.info.temperature), self.uniforms(seeds, logits.device))
        indices, counts = count_draws(classes, self.slots)
        fields = {f.name: f.dtype for f in self.fields()}
        return {
            **self.store_indices("sample_indices", indices),
            "sample_counts": counts.cpu().numpy().astype(fields["sample_counts"]),
            "lse": lse.numpy(),
            "target_logit": target.numpy(),
        }

    def class_indices(self, arrays: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
        return "sample_indices", self.load_indices(arrays, "sample_indices", self.slots)

    def decode(self, arrays: Mapping[str, np.ndarray | Tensor], labels: np.ndarray | Tensor) -> TeacherView:
        return TeacherView.from_sampled(
            torch.from_numpy(self.load_indices(arrays, "sample_indices", self.slots)),
            torch.as_tensor(np.asarray(arrays["sample_counts"]).astype(np.int64)),
            self.draws,
            self.info.temperature,
            torch.as_tensor(arrays["lse"]).float(),
            torch.as_tensor(arrays["target_logit"]).float(),
            torch.as_tensor(labels),
            self.num_classes,
        )
