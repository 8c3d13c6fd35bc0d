"""The training guard: notices within an epoch that training has gone wrong.

Three things are watched, step by step:

- a non-finite loss or gradient norm;
- a loss jump: the mean loss of the last ``window`` steps at least twice the lowest epoch mean
  of the run so far and above it by more than the loss of a chance-level guess on one scan
  (``ln C``), so an overfitted run's noise near zero loss is no jump;
- a dead calcium map: the map is zero on each of the last ``dead_after`` CAC-positive training
  scans, after it had held evidence (without it the decision rests on other features and
  Grad-CAM has nothing to show).

The loop answers an event by going back to the last good state with a lower learning rate, or
stops with a clear message once its recoveries are spent (``training/loop.py``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardEvent:
    """What went wrong (``kind``: ``non-finite``, ``loss jump``, ``dead map``) in words."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})"


class Guard:
    """Step-by-step watch of one run's training. ``num_classes`` sets the chance-level loss.

    ``step(loss, norm, live, dead)`` takes one step's loss, its gradient norm and how many of
    that step's CAC-positive scans have a calcium map with evidence (``live``) or a zero map
    (``dead``; both 0 without a calcium map) and returns a :class:`GuardEvent` or None.
    ``epoch_done(mean_loss)`` closes a good epoch; ``reset()`` starts again after a recovery.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        window: int = 20,
        jump_factor: float = 2.0,
        dead_after: int = 16,
    ) -> None:
        self.window = window
        self.jump_factor = jump_factor
        self.dead_after = dead_after
        self.chance = math.log(num_classes)
        self.best_epoch_loss = math.inf
        self.recent: deque[float] = deque(maxlen=window)
        self.map_seen_live = False
        self.dead_run = 0

    def reset(self) -> None:
        self.recent.clear()
        self.dead_run = 0

    def epoch_done(self, mean_loss: float) -> None:
        if math.isfinite(mean_loss):
            self.best_epoch_loss = min(self.best_epoch_loss, mean_loss)
        self.recent.clear()

    def step(self, loss: float, norm: float, live: int = 0, dead: int = 0) -> GuardEvent | None:
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return GuardEvent("non-finite", f"loss {loss}, gradient norm {norm}")
        self.recent.append(loss)
        if len(self.recent) == self.window and math.isfinite(self.best_epoch_loss):
            mean = sum(self.recent) / len(self.recent)
            reference = self.best_epoch_loss
            if mean >= self.jump_factor * reference and mean - reference > self.chance:
                return GuardEvent(
                    "loss jump",
                    f"mean of the last {self.window} steps {mean:.3f}, lowest epoch mean "
                    f"{reference:.3f}",
                )
        if live > 0:
            self.map_seen_live = True
            self.dead_run = 0
        else:
            self.dead_run += dead
        if self.map_seen_live and self.dead_run >= self.dead_after:
            return GuardEvent(
                "dead map",
                f"calcium map zero on the last {self.dead_run} CAC-positive training scans",
            )
        return None

    def state_dict(self) -> dict:
        return {
            "best_epoch_loss": self.best_epoch_loss,
            "map_seen_live": self.map_seen_live,
            "recent": list(self.recent),
            "dead_run": self.dead_run,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch_loss = float(state.get("best_epoch_loss", math.inf))
        self.map_seen_live = bool(state.get("map_seen_live", False))
        self.recent = deque((float(v) for v in state.get("recent", ())), maxlen=self.window)
        self.dead_run = int(state.get("dead_run", 0))
