"""The race's budget in image passes (issue 26): what bounds `advise`'s time whatever the data,
and what it leaves out is said in the advice."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_advise import _noisy_dataset

from tlvision.advisor import budget
from tlvision.advisor.measure import advise
from tlvision.advisor.race import TRIAL_EPOCHS


def test_a_trial_the_budget_cannot_pay_for_is_left_out_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _noisy_dataset(tmp_path / "noise")  # the frozen codes fail: trials are worth running
    cache = tmp_path / "cache"
    full = advise(data, cache_dir=cache, log=lambda _: None)
    evidence = full.to_json()["evidence"]
    trials = [entry for entry in evidence["race"] if entry["strategy"] == "finetune"]
    assert trials and not evidence["trial_skipped"]
    spent = evidence["race_budget"]["spent"]
    assert 0 < spent <= evidence["race_budget"]["budget"] == budget.RACE_BUDGET_PASSES

    sample = evidence["race_sample"]
    partial = budget.trial_passes(sample["fit"], sample["holdout"], 64, TRIAL_EPOCHS, False)
    frozen_only = spent - partial - (
        budget.trial_passes(sample["fit"], sample["holdout"], 64, TRIAL_EPOCHS, True)
        if len(trials) == 2 else 0.0
    )  # fmt: skip
    monkeypatch.setattr(budget, "RACE_BUDGET_PASSES", frozen_only + partial / 2)
    bounded = advise(data, cache_dir=cache, log=lambda _: None)
    evidence = bounded.to_json()["evidence"]
    assert [e for e in evidence["race"] if e["strategy"] == "finetune"] == []
    assert "the race's budget of" in evidence["trial_skipped"]
    assert "leaves the fine-tuning trials out" in evidence["trial_skipped"]
    assert evidence["race_budget"]["spent"] == pytest.approx(frozen_only)
    text = bounded.to_text()  # what `tlvision advise` prints
    assert "no fine-tuning trial: the race's budget of" in text
    assert any("the race's budget" in reason for reason in bounded.reasons)


def test_the_ledger_refuses_what_does_not_fit_and_counts_what_does() -> None:
    ledger = budget.RaceLedger(budget=100.0)
    ledger.charge(60.0)
    assert ledger.refusal("a trial", 30.0) == "" and ledger.spent == 90.0
    reason = ledger.refusal("another trial", 20.0)
    assert "leaves another trial out (20 passes; 90 already spent)" in reason
    assert ledger.spent == 90.0
    assert budget.trial_passes(100, 20, 112, 5, full=True) == pytest.approx(5 * 320 * 0.25)
