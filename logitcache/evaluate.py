"""Evaluate a classifier on the clean view of a dataset split: top-1, top-5, NLL and ECE."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .datasets import Dataset, ImageDataset
from .loader import augmented_batches, clean_batches
from .precision import Compute

ECE_BINS = 15
# With 5 classes or fewer every label is in the top 5: top-5 would read 100 % whatever the model.
TOP5_MIN_CLASSES = 6
_MAX_LOG_PPL = 700.0  # exp() of more overflows a float: such a perplexity reads as ~1e304


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int = ECE_BINS) -> float:
    """Equal-width-bin ECE: sum over bins of |accuracy - mean confidence| weighted by bin share."""
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)
    which = torch.bucketize(confidence, edges[1:-1], right=True)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap = (correct[mask].double().mean() - confidence[mask].double().mean()).abs()
            ece += gap * mask.double().mean()
    return float(ece)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 256,
                   workers: int = 0, compute: Compute | None = None) -> dict[str, float]:
    """Accuracy (%) and calibration of ``model`` on the clean images of ``dataset``: ``top1``,
    ``top5`` (only with ``TOP5_MIN_CLASSES`` or more classes), ``nll`` and ``ece``, with the
    forward run as ``compute`` says (default fp32); the metrics are computed in fp32. On text,
    per token (next-token accuracy), and also ``ppl`` = exp(nll).

    Sums are kept per batch (a text split's logits, rows x vocabulary, need not fit in memory).
    The model is put in eval mode for the pass and returned to its previous mode.
    """
    compute = compute or Compute()
    was_training = model.training
    model.eval()
    correct = top5 = nll = 0.0
    confidences, corrects = [], []
    try:
        for batch, inputs in augmented_batches(dataset, dataset.train_view, clean_batches(dataset, batch_size),
                                               device=device, workers=workers):
            # (rows, classes) for images and text alike
            logits = compute.forward(model, inputs).flatten(0, -2).cpu()
            labels = torch.from_numpy(dataset.labels[dataset.rows(batch.samples)])
            confidence, pred = logits.softmax(dim=1).max(dim=1)
            hit = pred == labels
            correct += float(hit.sum())
            if logits.shape[1] >= TOP5_MIN_CLASSES:
                top5 += float((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum())
            nll += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            confidences.append(confidence)
            corrects.append(hit)
    finally:
        model.train(was_training)
    rows = len(dataset.labels)
    metrics = {"top1": 100.0 * correct / rows}
    if dataset.num_classes >= TOP5_MIN_CLASSES:
        metrics["top5"] = 100.0 * top5 / rows
    metrics["nll"] = nll / rows
    metrics["ece"] = expected_calibration_error(torch.cat(confidences), torch.cat(corrects))
    if not isinstance(dataset, ImageDataset):
        metrics["ppl"] = math.exp(min(metrics["nll"], _MAX_LOG_PPL))
    return metrics
