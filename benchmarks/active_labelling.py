"""Active labelling on frozen codes: label-next's picks against random picks and uncertainty alone.

For each dataset: the pretrained body's codes of DATA/train (the unlabelled pool, its labels
hidden) and DATA/val (scored), read through tlvision's codes cache. Start from --start labelled
images per class (the same random ones for every method), then --rounds rounds: fit a logistic
regression head on the labelled codes, let the method pick --per-class x classes pool images,
"label" them (reveal their labels), refit. Val accuracy after every round, for

- label-next: tlvision.labelling.selection.select, exactly what `tlvision label-next` runs,
- uncertainty alone: the same with diversity off (margin only; duplicates still skipped),
- random: --seeds seeds, mean,
- with --candidates, the other selections of benchmarks/labelling_candidates.py.

--starts N repeats all of it from N different random starts (seeds --seed, --seed + 1, ...) and
reports the mean accuracy over the starts (random: over starts x seeds), and for each method how
many starts met the goal on their own.

Goal (issue 25): label-next reaches random's final accuracy with <= 60% of random's labels.

    python benchmarks/active_labelling.py ../datasets/fashion ../datasets/large \
        --starts 10 --candidates
"""

from __future__ import annotations

# isort: off
import tlvision  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLI does)
# isort: on

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from tlvision.config import TrainConfig
from tlvision.labelling.pool import pool_codes
from tlvision.labelling.selection import normalised, select
from tlvision.runs.reader import load_run_model, run_splits
from tlvision.training.fit import fit

sys.path.insert(0, str(Path(__file__).parent))
from labelling_candidates import CANDIDATES

Picker = Callable[[np.ndarray, np.ndarray, np.ndarray, int], list[int]]


def codes_of(data: Path, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train codes, train labels, val codes, val labels) of the pretrained mobilenet_v2 body."""
    out = root / data.name
    fit(
        TrainConfig(data_dir=data, out_dir=out, strategy="feature-extract", device="cpu"),
        log=lambda _message: None,
    )
    loaded = load_run_model(out)
    splits = run_splits(loaded.metadata)
    device = torch.device("cpu")
    found = {}
    for phase in ("train", "val"):
        samples = splits.samples[phase]
        codes = pool_codes(loaded, [path for path, _ in samples], device=device)
        assert not codes.unreadable, codes.unreadable
        found[phase] = (normalised(codes.codes), np.asarray([label for _, label in samples]))
    return (*found["train"], *found["val"])


def head(codes: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=10.0, max_iter=2000).fit(codes, labels)


def run_method(
    pick: Picker,
    data: tuple[np.ndarray, ...],
    start: np.ndarray,
    rounds: int,
    per_round: int,
    budget: int,
) -> tuple[list[tuple[int, float]], float]:
    """(labels, val accuracy) after the start and after each round; and the val accuracy with the
    first `budget` labels: the full rounds that fit, then the first picks of the next round (the
    picks come best first, as label-next lists them, so this is what a person labelling only
    `budget` images in all gets)."""
    train_codes, train_labels, val_codes, val_labels = data
    labelled = list(start)
    history = []
    for round_number in range(rounds + 1):
        model = head(train_codes[labelled], train_labels[labelled])
        history.append((len(labelled), float(model.score(val_codes, val_labels))))
        if round_number == rounds:
            break
        pool = np.setdiff1d(np.arange(len(train_codes)), labelled)
        probabilities = model.predict_proba(train_codes[pool])
        chosen = pick(train_codes[pool], probabilities, train_codes[labelled], per_round)
        labelled += [int(pool[index]) for index in chosen]
    first = labelled[:budget]
    at_budget = head(train_codes[first], train_labels[first]).score(val_codes, val_labels)
    return history, float(at_budget)


def label_next(
    codes: np.ndarray, probabilities: np.ndarray, labelled: np.ndarray, count: int
) -> list[int]:
    return [pick.index for pick in select(codes, probabilities, labelled, count)]


def uncertainty(
    codes: np.ndarray, probabilities: np.ndarray, labelled: np.ndarray, count: int
) -> list[int]:
    return [p.index for p in select(codes, probabilities, labelled, count, diversity=False)]


def random_picker(seed: int) -> Picker:
    rng = np.random.default_rng(seed)
    return lambda codes, _probabilities, _labelled, count: list(
        rng.choice(len(codes), count, replace=False)
    )


def labels_to_reach(history: list[tuple[int, float]], target: float) -> int | None:
    return next((labels for labels, accuracy in history if accuracy >= target - 1e-9), None)


def histories(
    arrays: tuple[np.ndarray, ...], start: np.ndarray, seed: int, args: argparse.Namespace
) -> dict[str, tuple[list[tuple[int, float]], float]]:
    """Every method's history and accuracy at the budget (--goal x random's final labels) from
    one start; random's are the means over --seeds seeds."""
    classes = int(arrays[1].max()) + 1
    per_round = args.per_class * classes
    budget = int(args.goal * (len(start) + args.rounds * per_round))
    methods: dict[str, Picker] = {"label-next": label_next, "uncertainty alone": uncertainty}
    if args.candidates:
        methods.update(
            (name, pick) for name, pick in CANDIDATES.items() if not args.only or name in args.only
        )
    runs = {
        name: run_method(pick, arrays, start, args.rounds, per_round, budget)
        for name, pick in methods.items()
    }
    randoms = [
        run_method(random_picker(seed + 1 + s), arrays, start, args.rounds, per_round, budget)
        for s in range(args.seeds)
    ]
    mean_history = [
        (randoms[0][0][i][0], float(np.mean([r[0][i][1] for r in randoms])))
        for i in range(len(randoms[0][0]))
    ]
    runs[f"random (mean of {args.seeds} seeds)"] = (
        mean_history,
        float(np.mean([r[1] for r in randoms])),
    )
    return runs


def measure(data: Path, args: argparse.Namespace, root: Path) -> None:
    arrays = codes_of(data, root)
    train_labels = arrays[1]
    classes = int(train_labels.max()) + 1
    by_start = []
    for seed in range(args.seed, args.seed + args.starts):
        rng = np.random.default_rng(seed)
        start = np.concatenate(
            [
                rng.choice(np.flatnonzero(train_labels == c), args.start, False)
                for c in range(classes)
            ]
        )
        by_start.append(histories(arrays, start, seed, args))
    random_name = f"random (mean of {args.seeds} seeds)"
    names = list(by_start[0])
    labels = [n for n, _ in by_start[0][random_name][0]]
    mean = {
        name: [float(np.mean([r[name][0][i][1] for r in by_start])) for i in range(len(labels))]
        for name in names
    }
    target_labels, target = labels[-1], mean[random_name][-1]
    budget = int(args.goal * target_labels)
    print(f"\n{data.name}: {len(train_labels)} pool images, {len(arrays[3])} val, {classes} "
          f"classes; {args.start}/class to start, {args.rounds} rounds of "
          f"{args.per_class * classes}; mean of {args.starts} start(s)")  # fmt: skip
    print("| method | " + " | ".join(f"{n} labels" for n in labels) +
          " | labels to reach random's final | share of random's labels"
          f" | starts meeting the goal | {budget} labels ({args.goal:.0%})"
          f" | starts reaching random's final with {budget} |")  # fmt: skip
    print("|---" * (len(labels) + 6) + "|")
    for name in names:
        needed = labels_to_reach(list(zip(labels, mean[name], strict=True)), target)
        share = "not reached" if needed is None else f"{needed / target_labels:.0%}"
        alone = [labels_to_reach(r[name][0], r[random_name][0][-1][1]) for r in by_start]
        met = sum(n is not None and n <= args.goal * target_labels for n in alone)
        at_budget = float(np.mean([r[name][1] for r in by_start]))
        reached = sum(r[name][1] >= r[random_name][0][-1][1] - 1e-9 for r in by_start)
        cells = " | ".join(f"{accuracy:.3f}" for accuracy in mean[name])
        print(
            f"| {name} | {cells} | {needed or 'not reached'} | {share} | {met} of {args.starts}"
            f" | {at_budget:.3f} | {reached} of {args.starts} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", type=Path, nargs="+")
    parser.add_argument("--start", type=int, default=5, help="labelled per class to start")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=2, help="picks per class per round")
    parser.add_argument("--seeds", type=int, default=5, help="random's seeds")
    parser.add_argument("--seed", type=int, default=0, help="the first start's seed")
    parser.add_argument("--starts", type=int, default=1, help="random starts, mean reported")
    parser.add_argument("--candidates", action="store_true", help="also the other selections")
    parser.add_argument("--goal", type=float, default=0.6, help="share of random's labels")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these candidates only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="active-labelling-") as root:
        for data in args.datasets:
            measure(data, args, Path(root))


if __name__ == "__main__":
    main()
