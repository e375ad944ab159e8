"""Losses and accuracies of a training run: eval-mode evaluation passes (`evaluate`), and the
training-mode losses read back to the host in batches (`Readback`) into running windows.
"""

from __future__ import annotations

import math

import torch



# ----------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, transform, loss, regression: bool,
             summed: bool, chunk: int = 1000) -> tuple[float, float]:
    """Loss and accuracy in eval mode (running statistics, no noise, no dropout).

    The loss is combined over the samples as in training: the sum over them when the run's loss
    is summed (the DLN), else the mean."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], chunk):
        xb, yb = transform(x[start:start + chunk]), y[start:start + chunk]
        out = model(xb)
        value = loss(out, yb).item()
        total_loss += value if summed else value * xb.shape[0]
        if not regression:
            correct += (out.argmax(1) == yb).sum().item()
    model.train(was_training)
    n = x.shape[0]
    return (total_loss if summed else total_loss / n), (math.nan if regression else correct / n)


# ----------------------------------------------------------------------------------------------
# losses and accuracies: deferred read-back, windows, divergence


class Window:
    """A running mean of (loss, accuracy) over the steps since it was last taken."""

    def __init__(self, state: dict | None = None):
        self.loss, self.accuracy, self.count = (state or {}).get("sums", (0.0, 0.0, 0))

    def add(self, loss: float, accuracy: float) -> None:
        self.loss, self.accuracy, self.count = self.loss + loss, self.accuracy + accuracy, self.count + 1

    def take(self) -> tuple[float, float]:
        mean = (self.loss / self.count, self.accuracy / self.count) if self.count else (math.nan, math.nan)
        self.loss, self.accuracy, self.count = 0.0, 0.0, 0
        return mean

    def state(self) -> dict:
        return {"sums": (self.loss, self.accuracy, self.count)}


class Readback:
    """Per-step training-mode losses and accuracies, read back to the host in batches.

    On CUDA a `.item()` per step stalls the host every step (measured on an H200: the VGG-11 x0.25
    loop at 0.75x its compute ceiling). Values stay on the device and are read back in one sync
    every `interval` steps (every step on the CPU, where it is free) and before anything that must not
    see a diverged step: a checkpoint, an evaluation, layer statistics, a progress line, the end.
    A non-finite loss found late still ends the run at its own step; steps taken after it on the
    device are never saved. Read values go into two windows: `train` (a train.csv row every
    `log.train_every` steps) and `since_eval` (the train_batches row of the next evaluation).
    """

    def __init__(self, interval: int, train_every: int, state: dict | None = None):
        self.interval, self.train_every = interval, train_every
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        state = state or {}
        self.train = Window(state.get("train"))
        self.since_eval = Window(state.get("since_eval"))
        self.last_loss = math.nan

    def state(self) -> dict:
        return {"train": self.train.state(), "since_eval": self.since_eval.state()}

    def add(self, step: int, loss: torch.Tensor, accuracy: torch.Tensor | None) -> None:
        self.pending.append((step, loss.detach(), None if accuracy is None else accuracy.detach()))

    def due(self) -> bool:
        return len(self.pending) >= self.interval

    def flush(self, rows: list[dict], log_metrics, log) -> int | None:
        """Move pending values into train.csv rows; return the step of the first non-finite loss."""
        if not self.pending:
            return None
        losses = [loss.float() for _, loss, _ in self.pending]
        accuracies = [acc for _, _, acc in self.pending if acc is not None]
        values = torch.stack(losses + accuracies).tolist()  # one host sync for all of them
        read_acc = iter(values[len(losses):])
        read = [(step, value, next(read_acc) if acc is not None else math.nan)
                for (step, _, acc), value in zip(self.pending, values)]
        self.pending.clear()
        for step, loss, accuracy in read:
            if not math.isfinite(loss):
                rows.append({"step": step, "loss": loss, "accuracy": math.nan})
                log(f"step {step}: loss is {loss}; the run diverged and ends here")
                return step
            self.last_loss = loss
            self.train.add(loss, accuracy)
            self.since_eval.add(loss, accuracy)
            if (step + 1) % self.train_every == 0:
                mean_loss, mean_accuracy = self.train.take()
                rows.append({"step": step, "loss": mean_loss, "accuracy": mean_accuracy})
                log_metrics({"train_loss": mean_loss,
                             **({} if math.isnan(mean_accuracy) else {"train_accuracy": mean_accuracy})}, step)
        return None
