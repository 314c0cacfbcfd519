"""Task types: how logits become a loss and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from invbench.metrics import SCORE_METRIC

TASK_TYPES = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Task:
    kind: str  # one of TASK_TYPES

    def __post_init__(self) -> None:
        if self.kind not in TASK_TYPES:
            raise ValueError(f"unknown task type {self.kind!r}; allowed: {', '.join(TASK_TYPES)}")

    def loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Binary: BCE with logits (labels 0/1). Multiclass: cross-entropy. Regression: MSE."""
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), y.reshape(-1).to(logits.dtype), reduction=reduction)
        if self.kind == "multiclass":
            return F.cross_entropy(logits, y.long(), reduction=reduction)
        return F.mse_loss(logits.reshape(-1), y.reshape(-1).to(logits.dtype), reduction=reduction)

    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Sums over the batch, so that chunks add up (divide by the count afterwards)."""
        loss = self.loss(logits, y, reduction="sum").item()
        if self.kind == "binary":
            correct = ((logits.reshape(-1) > 0).to(y.dtype) == y.reshape(-1)).sum().item()
            return {"loss": loss, "acc": correct}
        if self.kind == "multiclass":
            correct = (logits.argmax(dim=1) == y.long()).sum().item()
            return {"loss": loss, "acc": correct}
        return {"loss": loss, "mse": loss}

    # Packs of runs: logits (R, n, out), labels (R, n); one value per run. Each run's
    # values are reduced over its own contiguous row, the same way alone or in a pack.

    def run_losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(R,): each run's mean loss."""
        return self._elementwise_loss(logits, y).mean(dim=1)

    def run_metric_sums(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-run sums over the batch ((R,) each), so that chunks add up."""
        loss = self._elementwise_loss(logits, y).sum(dim=1)
        if self.kind == "binary":
            correct = ((logits[..., 0] > 0).to(y.dtype) == y).sum(dim=1)
            return {"loss": loss, "acc": correct.to(loss.dtype)}
        if self.kind == "multiclass":
            return {"loss": loss, "acc": (logits.argmax(dim=-1) == y.long()).sum(dim=1).to(loss.dtype)}
        return {"loss": loss, "mse": loss}

    def _elementwise_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(R, n): each example's loss."""
        runs, n = y.shape[0], y.shape[1]
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(logits[..., 0], y.to(logits.dtype), reduction="none")
        if self.kind == "multiclass":
            flat = F.cross_entropy(logits.reshape(runs * n, -1), y.reshape(-1).long(), reduction="none")
            return flat.reshape(runs, n)
        return F.mse_loss(logits[..., 0], y.to(logits.dtype), reduction="none")

    @property
    def score_name(self) -> str:
        """The metric model selection maximises ("acc"), or minimises for regression ("mse")."""
        return SCORE_METRIC[self.kind]
