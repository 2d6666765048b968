"""The race's budget, in 224-px image passes: what bounds `advise`'s time whatever the data.

The measurements every advice needs (the similarity signals on the holdout, the frozen codes of
the pool at two sizes) are bounded by the race's fixed counts (race.POOL_IMAGES, the holdout):
at most about 2,700 passes. The fine-tuning trials are what grows with the data (their size,
their input size, whether the full trial follows the partial one): each is run only when what
the race has spent plus the trial's cost stays within RACE_BUDGET_PASSES; a trial left out is
said in the advice, with its cost and the budget.

Counted in image passes (decision.cost_passes' unit: a forward pass of one 224-px image; a
training step counts decision.FULL_BACKWARD or PARTIAL_BACKWARD passes; an image at s px
(s / 224)^2 of one), never in seconds, so the same data and seed race the same way on a busy
machine. On the 2-core CPU the budget was set on, a pass costs about 1/90 s
(decision.NOMINAL_SECONDS_PER_PASS) and the rest of a cold `advise` (start-up, decoding,
cross-validation) about 25 s: 5,500 passes keep it within 90 s on 3,000 images
(benchmarks/RESULTS.md, "The advisor's time").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tlvision.advisor.decision import FULL_BACKWARD, PARTIAL_BACKWARD, REFERENCE_SIZE

RACE_BUDGET_PASSES = 5500.0
# A training step on a small image costs about what one at 96 px does on a CPU (decoding,
# augmentation and per-image work outweigh the pixels): measured, the partial trial at 64 px
# (fashion, glyphs) took about as long as emoji's at 96 px.
TRIAL_FLOOR_SIZE = 96


def scale(input_size: int) -> float:
    """One image at `input_size` px in 224-px passes."""
    return (input_size / REFERENCE_SIZE) ** 2


def trial_passes(fit_images: int, holdout_images: int, size: int, epochs: int, full: bool) -> float:
    """A fine-tuning trial: each epoch trains on the fit sample and scores the holdout; an
    image smaller than TRIAL_FLOOR_SIZE counts as one of that size."""
    backward = FULL_BACKWARD if full else PARTIAL_BACKWARD
    return epochs * (backward * fit_images + holdout_images) * scale(max(size, TRIAL_FLOOR_SIZE))


@dataclass
class RaceLedger:
    """What the race has spent of its budget, item by item (a tally, filled as it runs)."""

    budget: float = field(default_factory=lambda: RACE_BUDGET_PASSES)
    spent: float = 0.0

    def charge(self, passes: float) -> None:
        """A measurement every advice makes: counted, never refused."""
        self.spent += passes

    def refusal(self, what: str, passes: float) -> str:
        """ "" and the cost counted when `what` fits in what is left; else why it is left out."""
        if self.spent + passes <= self.budget:
            self.spent += passes
            return ""
        return (
            f"the race's budget of {self.budget:,.0f} image passes leaves {what} out "
            f"({passes:,.0f} passes; {self.spent:,.0f} already spent), which keeps advise "
            "within about 90 s on a CPU"
        )
