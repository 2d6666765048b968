"""The advisor's pure decision on hand-made evidence: every branch of decide and its helpers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tlvision.advisor.decision import (
    MARGIN,
    Entry,
    Evidence,
    PretrainedFit,
    SizeEvidence,
    axes,
    comparable_accuracy,
    decide,
    extrapolate_epochs,
    finetune_epochs,
    full_trial_plan,
    scored_images,
    standard_error,
    trial_accuracy,
    trial_plan,
)

LARGE = SizeEvidence(
    train_images=2000, val_images=500, test_images=0, classes=10, per_class_min=200,
    per_class_median=200, per_class_max=200, imbalance_ratio=1.0, native_short_side=32,
)  # fmt: skip
SMALL = replace(LARGE, train_images=200, per_class_min=20, per_class_median=20, per_class_max=20)
# ImageNet-like photos: a confident head, activations close to ImageNet's.
PHOTOS = PretrainedFit(
    imagenet_confidence=0.7, batchnorm_shift={"stem": 0.1, "stage1": 0.1}, images=100
)
# Far from ImageNet: an unsure head, shifted activations.
FAR = PretrainedFit(imagenet_confidence=0.2, batchnorm_shift={"stem": 0.5, "stage1": 0.4}, images=9)
FLAT_CURVE = {"0.25": 0.9, "0.5": 0.9, "1": 0.9}


def frozen(stage: str | None, size: int, accuracy: float) -> Entry:
    name = f"frozen {stage or 'top'} @{size}"
    return Entry(name, "linear-probe", stage, size, accuracy, "hand-made", 0.0)


def trial(freeze_until: str | None, curve: tuple[float, ...], reference: float) -> Entry:
    name = f"fine-tune {freeze_until or 'all'}"
    return Entry(name, "finetune", freeze_until, 64, curve[-1], "hand-made", 0.0, curve, reference)


def evidence(
    race: list[Entry],
    *,
    size: SizeEvidence = LARGE,
    fit: PretrainedFit = FAR,
    probe: dict[str, float] | None = None,
    scored: int = 2000,
    curve: dict[str, float] = FLAT_CURVE,
    skipped: str = "",
    seconds_per_pass: float = 0.01,
) -> Evidence:
    return Evidence(
        size=size, pretrained_fit=fit,
        probe_accuracy=probe or {"stage2": 0.8, "stage3": 0.85, "top": 0.85},
        race=tuple(race), race_sample={"cv": scored, "fit": 600, "holdout": 300},
        learning_curve=curve, trial_skipped=skipped, device_kind="cpu",
        seconds_per_pass=seconds_per_pass, native_input_size=64,
    )  # fmt: skip


def test_the_cheapest_candidate_within_the_margin_wins() -> None:
    # The weights' own size reads 0.015 better, within the 0.02 margin: the cheaper size wins.
    advice = decide(
        evidence([frozen(None, 224, 0.915), frozen(None, 64, 0.90), frozen("stage2", 64, 0.6)]),
        time_budget_minutes=30,
    )
    assert (advice.strategy, advice.stage, advice.input_size) == ("linear-probe", None, 64)
    assert advice.head == "logreg" and advice.margin == MARGIN
    assert [s.name for s in advice.standings if s.within_margin] == [
        "frozen top @64",
        "frozen top @224",
    ]


def test_a_better_candidate_beyond_the_margin_wins_despite_its_cost() -> None:
    advice = decide(
        evidence([frozen(None, 64, 0.85), frozen(None, 224, 0.90)]), time_budget_minutes=30
    )
    assert advice.input_size == 224
    assert advice.standings[0].cost_passes < advice.standings[1].cost_passes


def test_fine_tuning_wins_when_its_trial_gains_more_than_the_margin() -> None:
    race = [frozen("stage3", 64, 0.80), trial("stage2", (0.6, 0.8, 0.9), reference=0.80)]
    advice = decide(evidence(race), time_budget_minutes=30)
    assert (advice.strategy, advice.stage) == ("finetune", "stage2")
    assert advice.epochs == 5 and advice.head == "linear"
    assert advice.predicted_seconds == pytest.approx(advice.standings[-1].predicted_seconds)


def test_a_trials_gain_counts_from_the_frozen_codes_at_its_own_size() -> None:
    # Fine-tuning at 64 px gains 0.01 over the frozen codes at 64 px: 0.86, not 0.01 over the
    # 224-px top codes (0.93), which it would have been within the margin of, and cheaper.
    race = [
        frozen("stage3", 64, 0.85),
        frozen(None, 224, 0.92),
        trial("stage2", (0.80, 0.81, 0.81), reference=0.80),
    ]
    advice = decide(evidence(race), time_budget_minutes=30)
    predicted = {s.name: s.predicted_accuracy for s in advice.standings}
    assert predicted["fine-tune stage2"] == pytest.approx(0.86)
    assert (advice.strategy, advice.input_size) == ("linear-probe", 224)


def test_fine_tuning_within_the_margin_loses_to_the_frozen_codes() -> None:
    race = [frozen("stage3", 64, 0.90), trial(None, (0.88, 0.90, 0.905), reference=0.90)]
    advice = decide(evidence(race), time_budget_minutes=30)
    assert advice.strategy == "linear-probe" and advice.stage == "stage3"
    assert all(standing.within_margin for standing in advice.standings)


def test_a_budget_too_small_for_three_epochs_leaves_fine_tuning_out() -> None:
    race = [frozen("stage3", 64, 0.80), trial(None, (0.6, 0.8, 0.95), reference=0.80)]
    advice = decide(evidence(race), time_budget_minutes=0.1)
    assert advice.strategy == "linear-probe"
    assert [standing.name for standing in advice.standings] == ["frozen stage3 @64"]
    assert any("budget" in reason for reason in advice.reasons)


def test_a_skipped_trial_is_given_as_a_reason() -> None:
    advice = decide(
        evidence([frozen(None, 224, 0.97)], skipped="small and similar"), time_budget_minutes=30
    )
    assert any("not raced: small and similar" in reason for reason in advice.reasons)


def test_a_small_pool_widens_the_margin_to_one_standard_error() -> None:
    advice = decide(
        evidence([frozen(None, 224, 1.0), frozen("stage2", 224, 0.95)], scored=12),
        time_budget_minutes=30,
    )
    assert advice.margin == pytest.approx(standard_error(1.0, 12)) and advice.margin > 0.05
    assert standard_error(1.0, 12) > 0  # a perfect score on few images still has an error
    # Evidence recorded before the race cross-validated: the holdout was what was scored.
    assert scored_images({"fit": 600, "holdout": 300}) == 300
    assert scored_images({"cv": 2000, "fit": 600, "holdout": 300}) == 2000


@pytest.mark.parametrize(
    ("fit", "chosen"), [(PHOTOS, None), (FAR, "stage3")], ids=["similar", "different"]
)
def test_exact_ties_follow_the_rules_of_thumb(fit: PretrainedFit, chosen: str | None) -> None:
    # Similar data: the top codes first; different data: the earlier stage first.
    race = [frozen(None, 64, 0.90), frozen("stage3", 64, 0.90)]
    advice = decide(evidence(race, fit=fit), time_budget_minutes=30)
    assert advice.stage == chosen


def test_of_equal_costs_the_better_prediction_wins() -> None:
    # Within the margin of each other and equally cheap: no reason to take the worse one, even
    # where the rules of thumb (similar data: the top codes) would have it first.
    race = [frozen(None, 64, 0.90), frozen("stage3", 64, 0.91), frozen("stage3", 224, 0.93)]
    advice = decide(evidence(race, fit=PHOTOS), time_budget_minutes=30)
    assert (advice.stage, advice.input_size) == ("stage3", 64)


def test_evidence_round_trips_through_json() -> None:
    measured = evidence([frozen("stage3", 64, 0.8), trial(None, (0.6, 0.8, 0.9), 0.8)])
    assert Evidence.from_json(measured.to_json()) == measured


def test_the_advice_does_not_depend_on_the_measured_speed() -> None:
    race = [frozen("stage3", 64, 0.80), trial("stage2", (0.6, 0.8, 0.9), reference=0.80)]
    quiet = decide(evidence(race, seconds_per_pass=0.01), time_budget_minutes=5)
    busy = decide(evidence(race, seconds_per_pass=1.0), time_budget_minutes=5)
    assert (quiet.strategy, quiet.stage, quiet.epochs) == (busy.strategy, busy.stage, busy.epochs)
    assert busy.predicted_seconds == pytest.approx(100 * quiet.predicted_seconds)


def test_axes_and_quadrants() -> None:
    similar_probe = {"stage2": 0.8, "stage3": 0.85, "top": 0.9}
    assert axes(SMALL, PHOTOS, similar_probe)[:2] == (True, True)
    assert axes(LARGE, PHOTOS, similar_probe)[:2] == (False, True)
    # Two of three signals say different (the head and the BatchNorm shift).
    assert axes(LARGE, FAR, similar_probe)[:2] == (False, False)
    # An earlier stage reading much better than the top is the third vote.
    earlier_wins = {"stage2": 0.8, "stage3": 0.95, "top": 0.85}
    assert axes(SMALL, replace(PHOTOS, imagenet_confidence=0.2), earlier_wins)[:2] == (True, False)
    small_photos = evidence([frozen(None, 224, 0.9)], size=SMALL, fit=PHOTOS)
    advice = decide(small_photos, time_budget_minutes=30)
    assert advice.quadrant.startswith("small and similar") and advice.size == "small"


def test_trial_plan() -> None:
    probe = {"stage2": 0.8, "stage3": 0.85, "top": 0.9}

    def plan(size: SizeEvidence, fit: PretrainedFit, probe: dict[str, float], budget: float) -> str:
        return trial_plan(
            size, fit, probe, native_input_size=64, device_kind="cpu", time_budget_minutes=budget
        )

    assert "small and similar" in plan(SMALL, PHOTOS, probe, 30)
    assert "already reach 0.990" in plan(
        LARGE, FAR, {"stage2": 0.8, "stage3": 0.99, "top": 0.9}, 30
    )
    assert "budget" in plan(LARGE, FAR, probe, 0.1)
    assert plan(LARGE, FAR, probe, 30) == ""
    assert plan(SMALL, FAR, probe, 30) == ""  # small but different: worth a trial


def test_finetune_epochs_follow_the_budget_at_a_nominal_speed() -> None:
    assert finetune_epochs(LARGE, 64, "cpu", 30) == 5
    assert finetune_epochs(LARGE, 224, "cpu", 2) < 3
    assert finetune_epochs(LARGE, 224, "cuda", 2) == 5


def test_measured_accuracies_are_the_predictions_without_extrapolation_over_data() -> None:
    # The frozen candidates are cross-validated over the pool: their scores are the predictions.
    race = [frozen(None, 64, 0.81), frozen("stage3", 224, 0.87)]
    advice = decide(evidence(race), time_budget_minutes=30)
    assert {s.name: s.predicted_accuracy for s in advice.standings} == {
        "frozen top @64": 0.81,
        "frozen stage3 @224": 0.87,
    }


def test_extrapolation_over_epochs() -> None:
    assert extrapolate_epochs((0.6, 0.8, 0.9), 3) == 0.9  # no more epochs: as measured
    assert extrapolate_epochs((0.9, 0.8), 5) == 0.8  # falling: no gain assumed
    rising = extrapolate_epochs((0.6, 0.8, 0.9), 5)
    assert 0.9 < rising <= 1 - 0.1 * 3 / 5 + 1e-9  # no faster than 1/epochs
    # A trial's gain over the frozen codes at its size is added to the best frozen candidate.
    entry = trial(None, (0.7, 0.75), reference=0.70)
    assert comparable_accuracy(entry, 0.9, 2) == pytest.approx(0.95)
    assert comparable_accuracy(frozen(None, 64, 0.8), 0.9, 5) == 0.8


def test_a_trial_as_long_as_the_run_is_read_not_extrapolated() -> None:
    curve = (0.6, 0.8, 0.7, 0.85, 0.9)
    assert trial_accuracy(curve, 5) == 0.9
    assert trial_accuracy(curve, 3) == 0.7  # a shorter run: the trial's epoch of that number
    assert trial_accuracy(curve, 8) == extrapolate_epochs(curve, 8) > 0.9


def test_full_fine_tuning_is_tried_only_when_partial_comes_within_the_margin() -> None:
    race = [frozen("stage3", 64, 0.85), frozen(None, 224, 0.90)]
    sample = {"cv": 2000, "fit": 900, "holdout": 300}
    # partial gains 0.02 over the 64-px codes on its own images: 0.87, 0.03 below the best.
    behind = trial("stage2", (0.70, 0.80), reference=0.78)
    reason = full_trial_plan(race, behind, epochs=2, race_sample=sample)
    assert "the partial trial predicts 0.870" in reason and "(0.900)" in reason
    close = trial("stage2", (0.70, 0.81), reference=0.78)  # 0.88: within 0.02 of 0.90
    assert full_trial_plan(race, close, epochs=2, race_sample=sample) == ""
    ahead = trial("stage2", (0.70, 0.95), reference=0.78)
    assert full_trial_plan(race, ahead, epochs=2, race_sample=sample) == ""
    # a small pool widens the margin as decide does: 0.87 is within one standard error of 0.90
    assert full_trial_plan(race, behind, epochs=2, race_sample={"cv": 100, "holdout": 30}) == ""
    # the reason reaches the advice
    skipped = replace(evidence([*race, behind]), full_trial_skipped=reason)
    advice = decide(skipped, time_budget_minutes=30)
    assert f"full fine-tuning not raced: {reason}" in advice.reasons
    assert Evidence.from_json(skipped.to_json()) == skipped
