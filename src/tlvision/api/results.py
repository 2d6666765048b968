"""What the Python API returns: a trained Run and the reports of advise, check and probe.

Each report holds exactly what its command prints with --json (`to_json()`) and without it
(`str(report)`), with typed properties for the fields people use, and shows as a small HTML table
in a notebook (`_repr_html_`). Nothing here imports torch: `import tlvision` stays fast, and a
Run loads its model only when asked to predict or evaluate.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision.data.doctor_report import counted
from tlvision.errors import UserError
from tlvision.inference.prediction import ImageLike, Prediction
from tlvision.runs.layout import CODE_DISTANCE
from tlvision.tables import escape, html_table

if TYPE_CHECKING:
    import numpy as np

    from tlvision.api.notebook import Figure, TopLosses
    from tlvision.inference.class_maps import ClassMaps
    from tlvision.inference.evaluation import ClassificationReport
    from tlvision.inference.runtime import Classifier
    from tlvision.inference.table_evaluation import MultiLabelReport
    from tlvision.labelling.next import LabelNext
    from tlvision.report.interpretation import ValResults
    from tlvision.runs.reader import LoadedModel

__all__ = ["Advice", "CheckReport", "Comparison", "ImageLike", "Prediction", "ProbeTable", "Run"]


@dataclass(frozen=True, repr=False)
class _Report:
    details: dict[str, Any]  # what `tlvision COMMAND --json` prints
    text: str  # what it prints without --json

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self.details)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, repr=False)
class Advice(_Report):
    """The advisor's recommendation (`tlvision advise`), with the measurements behind it."""

    @property
    def strategy(self) -> str:
        return str(self.details["strategy"])

    @property
    def stage(self) -> str | None:
        return self.details["stage"]

    @property
    def head(self) -> str:
        return str(self.details["head"])

    @property
    def input_size(self) -> int:
        return int(self.details["input_size"])

    @property
    def epochs(self) -> int:
        return int(self.details["epochs"])

    @property
    def quadrant(self) -> str:
        return str(self.details["quadrant"])

    @property
    def reasons(self) -> list[str]:
        return list(self.details["reasons"])

    @property
    def command(self) -> str:
        """The `tlvision train` command line that follows the advice."""
        return str(self.details["command"])

    @property
    def probe_accuracy(self) -> dict[str, float]:
        """logreg accuracy by stage, on the race's held-out part of train/ (never val/)."""
        return dict(self.details["evidence"]["probe"])

    def __repr__(self) -> str:
        return (
            f"Advice(strategy={self.strategy!r}, stage={self.stage!r}, quadrant={self.quadrant!r})"
        )

    def _repr_html_(self) -> str:
        recommended = html_table(
            ["strategy", "stage", "head", "input size", "epochs", "quadrant"],
            [[self.strategy, self.stage, self.head, self.input_size, self.epochs, self.quadrant]],
            caption="recommended",
        )
        size = self.details["evidence"]["size"]
        probe = html_table(
            ["stage", "holdout accuracy (logreg on a held-out part of train)"],
            sorted(self.probe_accuracy.items()),
            caption=f"{size['classes']} classes, {size['train_images']} train / "
            f"{size['val_images']} val images",
        )
        reasons = "".join(f"<li>{escape(reason)}</li>" for reason in self.reasons)
        return f"{recommended}{probe}<ul>{reasons}</ul>"


@dataclass(frozen=True, repr=False)
class CheckReport(_Report):
    """What `tlvision check` found: problems to fix, informational notes, images per class."""

    @property
    def ok(self) -> bool:
        return bool(self.details["ok"])

    @property
    def exit_status(self) -> int:
        """The command's exit status: 0 without problems, 1 with."""
        return int(self.details["exit_status"])

    @property
    def problems(self) -> list[dict[str, str]]:
        """One dict per problem: kind, path, message (what to do)."""
        return list(self.details["problems"])

    @property
    def notes(self) -> list[dict[str, str]]:
        return list(self.details["notes"])

    @property
    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per split, per class: the images that load."""
        return copy.deepcopy(self.details["class_counts"])

    def __repr__(self) -> str:
        return (
            f"CheckReport(data_dir={self.details['data_dir']!r}, ok={self.ok}, "
            f"problems={len(self.problems)}, notes={len(self.notes)})"
        )

    def _repr_html_(self) -> str:
        counts = self.details["class_counts"]
        splits = list(counts)
        names = sorted({name for split in splits for name in counts[split]})
        classes = html_table(
            ["class", *splits],
            [[name, *(counts[split].get(name) for split in splits)] for name in names],
            caption=f"{self.details['data_dir']}: "
            + ("no problems found" if self.ok else counted(len(self.problems), "problem")),
        )
        findings = html_table(
            ["kind", "path", "message"],
            [[item["kind"], item["path"], item["message"]] for item in self.problems[:50]],
            caption="problems" + (" (first 50)" if len(self.problems) > 50 else ""),
        )
        return classes + (findings if self.problems else "")


@dataclass(frozen=True, repr=False)
class Comparison(_Report):
    """`tlvision compare`: one row per run (run, strategy, backbone, input size, epochs, best
    and final val accuracy, seconds)."""

    @property
    def rows(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.details["runs"]))

    def __repr__(self) -> str:
        return f"Comparison({len(self.details['runs'])} runs)"

    def _repr_html_(self) -> str:
        rows = self.details["runs"]
        header = list(rows[0]) if rows else []
        return html_table(header, [[row[key] for key in header] for row in rows])


@dataclass(frozen=True, repr=False)
class ProbeTable(_Report):
    """`tlvision probe`: val accuracy of each linear head on each stage's frozen codes."""

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per (stage, head): stage, head, val_acc, train_acc, seconds, C."""
        return copy.deepcopy(self.details["rows"])

    def accuracy(self, stage: str, head: str) -> float:
        """Val accuracy of `head` on the codes of `stage` ("top": the head's own input)."""
        for row in self.details["rows"]:
            if row["stage"] == stage and row["head"] == head:
                return float(row["val_acc"])
        raise KeyError(f"no row for stage {stage!r} and head {head!r}")

    def __repr__(self) -> str:
        best = max(self.details["rows"], key=lambda row: row["val_acc"])
        return (
            f"ProbeTable(backbone={self.details['backbone']!r}, best={best['stage']}/"
            f"{best['head']} {best['val_acc']:.4f})"
        )

    def _repr_html_(self) -> str:
        heads = list(dict.fromkeys(row["head"] for row in self.details["rows"]))
        by_cell = {(row["stage"], row["head"]): row["val_acc"] for row in self.details["rows"]}
        stages = self.details["stages"]
        return html_table(
            ["stage", *heads],
            [[stage, *(by_cell.get((stage, head)) for head in heads)] for stage in stages],
            caption=f"val accuracy: {self.details['backbone']} ({self.details['weights']}), "
            f"input {self.details['input_size']} px",
        )


@dataclass(repr=False, eq=False)
class Run:
    """A finished training run: its directory, summary, per-epoch metrics and model.

    The model is loaded on the first `predict` or `evaluate` and kept.
    """

    run_dir: Path
    summary: dict[str, Any]  # summary.json: best_val_acc, best_epoch, classes, strategy, ...
    metrics: list[dict[str, Any]]  # metrics.jsonl: one dict per epoch (epoch, val_acc, ...)
    model_info: dict[str, Any]  # model.json: classes, backbone, preprocessing, config
    _loaded: LoadedModel | None = field(default=None, init=False)
    _classifiers: dict[tuple[str, str], Classifier] = field(default_factory=dict, init=False)

    @property
    def classes(self) -> list[str]:
        return list(self.model_info["classes"])

    @property
    def final_val_acc(self) -> float | None:
        """The last epoch's val accuracy (the headline number; `summary` has the best)."""
        return self.metrics[-1].get("val_acc") if self.metrics else None

    def model(self) -> LoadedModel:
        """The trained network with its classes and preprocessing (loaded once)."""
        if self._loaded is None:
            from tlvision.runs.reader import load_run_model

            self._loaded = load_run_model(self.run_dir)
        return self._loaded

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        top_k: int = 1,
        device: str = "auto",
        batch_size: int = 32,
        tta: bool = False,
        runtime: str = "auto",
        workers: int | None = None,
        reject: str | float = "off",
    ) -> list[Prediction]:
        """Top-k classes for each image: files, folders (searched recursively), PIL images or
        arrays of pixels, one or a list. An unreadable file gets an `error` instead of stopping.
        tta: average the mirror and corner-crop views' probabilities (tlvision.inference.tta).
        runtime: auto (ONNX Runtime on a CPU once an export exists or for 500 images or more,
        see tlvision.inference.runtime), torch or a serving export format. workers: decoding
        threads (None: one per core; 0: none). reject: "auto" (the threshold calibrated on val
        at training time), "off", or a score threshold: each prediction gets `ood_score` and
        `unknown`, and an unknown image no class (tlvision.inference.rejection)."""
        from tlvision.inference.ood import rejection_of_run
        from tlvision.inference.sources import image_inputs
        from tlvision.inference.stream import stream_predictions

        rejection = rejection_of_run(self.run_dir, reject)
        inputs = image_inputs(images)
        classifier = self.classifier(runtime, device, image_count=len(inputs))
        return list(
            stream_predictions(
                classifier, inputs, top_k=top_k, batch_size=batch_size, decoders=workers, tta=tta,
                rejection=rejection,
            )
        )  # fmt: skip

    def label_next(
        self,
        pool: str | Path | Sequence[str | Path],
        n: int = 10,
        *,
        out: str | Path | None = None,
        data: str | Path | None = None,
        device: str = "auto",
    ) -> LabelNext:
        """The `n` pool images (files or folders, read recursively) most worth labelling next,
        as `tlvision label-next`: uncertain, spread out, no near-duplicates of each other or of
        the train images; also writes a CSV to fill in and a contact sheet into `out`
        (default RUN/label-next/)."""
        from tlvision.compute.devices import resolve_device
        from tlvision.labelling.next import label_next

        pool_list = [pool] if isinstance(pool, str | Path) else list(pool)
        return label_next(
            self.run_dir, [Path(item) for item in pool_list], n,
            out_dir=None if out is None else Path(out),
            data_dir=None if data is None else Path(data), device=resolve_device(device),
        )  # fmt: skip

    def calibrate(
        self,
        *,
        data: str | Path | None = None,
        val_rejected: float = 0.05,
        score: str = CODE_DISTANCE,
    ) -> dict[str, Any]:
        """(Re)write RUN/rejection.json from the run's val images (of `data`, default the run's
        own data): what training does at its end, for runs made before it did. `score`:
        code-distance (the train codes stored beside it, RUN/ood_codes.safetensors), energy or
        max-softmax. Returns its content."""
        from tlvision.inference.rejection import calibrate_run

        return calibrate_run(
            self.run_dir, data_dir=None if data is None else Path(data),
            val_rejected=val_rejected, score=score,
        )  # fmt: skip

    def predict_proba(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        device: str = "auto",
        batch_size: int = 32,
        tta: bool = False,
        runtime: str = "auto",
    ) -> np.ndarray:
        """Class probabilities, scikit-learn style: an (images, classes) float array, columns in
        the order of `run.classes`; a row of NaN for a file that could not be read (`predict`
        says why)."""
        import numpy

        from tlvision.inference.sources import image_inputs
        from tlvision.inference.stream import classify

        inputs = image_inputs(images)
        classifier = self.classifier(runtime, device, image_count=len(inputs))
        columns = [list(classifier.class_names).index(name) for name in self.classes]
        rows = numpy.full((len(inputs), len(columns)), numpy.nan, dtype=numpy.float32)
        items = classify(classifier, inputs, batch_size=batch_size, tta=tta)
        for row, item in enumerate(items):
            if item.probabilities is not None:
                rows[row] = item.probabilities[columns]
        return rows

    def classifier(
        self, runtime: str = "auto", device: str = "auto", *, image_count: int | None = None
    ) -> Classifier:
        """The model behind uint8 pixels on a runtime (tlvision.inference.runtime), opened once
        each."""
        from tlvision.compute.devices import resolve_device
        from tlvision.inference.runtime import open_classifier, runtime_for

        resolved = resolve_device(device)
        chosen = runtime_for(self.run_dir, runtime, resolved, image_count)
        key = (chosen, str(resolved))
        if key not in self._classifiers:
            self._classifiers[key] = open_classifier(
                self.run_dir, runtime, device=resolved, image_count=image_count
            )
        return self._classifiers[key]

    def evaluate(
        self, split_dir: str | Path, *, split: str = "val", device: str = "auto",
        batch_size: int = 32, tta: bool = False, runtime: str = "auto",
    ) -> ClassificationReport | MultiLabelReport:  # fmt: skip
        """As `tlvision evaluate`: on a split folder whose class folders this model knows,
        accuracy, per-class precision/recall/F1, confusion matrix; on a label table (DATA/val.csv,
        or a DATA folder holding `split`.csv) the same, or for a multi-label run its mAP, micro
        and macro F1 at its thresholds and per-class AP, precision, recall and F1."""
        from tlvision.compute.devices import resolve_device
        from tlvision.inference.table_evaluation import evaluate_data

        return evaluate_data(
            self.run_dir, Path(split_dir), split=split, device=resolve_device(device),
            batch_size=batch_size, tta=tta, runtime=runtime,
        )  # fmt: skip

    def report(self, data: str | Path | None = None, *, device: str = "auto") -> Path:
        """Write RUN/report.html as `tlvision report` does (`data`: default the run's own
        dataset); returns its path."""
        from tlvision.compute.devices import resolve_device
        from tlvision.report.page import write_report

        data_dir = None if data is None else Path(data)
        return write_report(self.run_dir, data_dir, device=resolve_device(device)).path

    def export(
        self,
        format: str = "onnx",
        *,
        out: str | Path | None = None,
        class_maps: bool = False,
        quantize: str | None = None,
        data: str | Path | None = None,
    ) -> Path:
        """Export the model as `tlvision export` does (parity checked before it counts as
        written); returns the file's path (its JSON sidecar is beside it, name + ".json")."""
        from tlvision.export.exporter import ExportRequest, default_out, export_model

        request = ExportRequest(
            run_dir=self.run_dir,
            format=format,
            out=None if out is None else Path(out),
            class_maps=class_maps,
            quantize=quantize,
            data=None if data is None else Path(data),
        )
        export_model(request)
        return request.out or default_out(request)

    def class_maps(self, image: ImageLike) -> ClassMaps:
        """Per-class score maps of one image at its own size (the head read as a 1x1
        convolution over the last feature map); `.top(k)`, `.probability_maps()`."""
        from tlvision.inference.class_maps import class_mapper, class_maps
        from tlvision.inference.sources import image_inputs, rgb_image

        inputs = image_inputs(image)
        if len(inputs) != 1:
            raise UserError(f"class_maps takes one image; got {len(inputs)}")
        return class_maps(class_mapper(self.model()), rgb_image(inputs[0], 0))

    def top_losses(
        self, count: int = 9, *, data: str | Path | None = None, device: str = "auto"
    ) -> TopLosses:
        """The `count` val images with the highest loss, highest first, as the report shows
        them (`data`: default the run's own dataset); shows thumbnails in a notebook."""
        from tlvision.api.notebook import top_losses_of

        return top_losses_of(self._val_results(data, device), count)

    def plot_confusion(self, *, data: str | Path | None = None, device: str = "auto") -> Figure:
        """The val confusion matrix (counts, and each row as shares), as the report draws it;
        shows inline in a notebook, `.save(path)` writes the PNG."""
        from tlvision.api.notebook import confusion_figure

        return confusion_figure(self._val_results(data, device))

    def inline_report(self, data: str | Path | None = None, *, device: str = "auto") -> Any:
        """RUN/report.html shown in the notebook (written first when the run has none)."""
        from tlvision.api.notebook import InlineReport
        from tlvision.runs.layout import REPORT_FILE

        path = self.run_dir / REPORT_FILE
        if data is not None or not path.is_file():
            path = self.report(data, device=device)
        return InlineReport(path)

    def _val_results(self, data: str | Path | None, device: str) -> ValResults:
        from tlvision.compute.devices import resolve_device
        from tlvision.report.interpretation import val_results
        from tlvision.runs.reader import run_splits

        loaded = self.model()
        splits = run_splits(loaded.metadata, None if data is None else Path(data))
        return val_results(loaded, splits, device=resolve_device(device))

    def __repr__(self) -> str:
        return (
            f"Run({str(self.run_dir)!r}, strategy={self.summary.get('strategy')!r}, "
            f"classes={self.classes}, final_val_acc={self.final_val_acc})"
        )

    def _repr_html_(self) -> str:
        best = float(self.summary.get("best_val_acc", 0.0))
        summary = html_table(
            ["run", "strategy", "backbone", "classes", "final val acc", "best val acc (epoch)"],
            [
                [
                    str(self.run_dir),
                    self.summary.get("strategy"),
                    self.summary.get("backbone"),
                    ", ".join(self.classes),
                    self.final_val_acc,
                    f"{best:.4f} (epoch {self.summary.get('best_epoch')})",
                ]
            ],
        )
        columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
        shown = [name for name in columns if any(name in record for record in self.metrics)]
        epochs = html_table(
            shown, [[record.get(name) for name in shown] for record in self.metrics[-30:]]
        )
        return summary + epochs + self._report_html()

    def _report_html(self) -> str:
        """The run's report.html, folded under the tables, when it has one."""
        from tlvision.api.notebook import InlineReport
        from tlvision.runs.layout import REPORT_FILE

        path = self.run_dir / REPORT_FILE
        if not path.is_file():
            return ""
        page = InlineReport(path)._repr_html_()
        return f"<details><summary>report.html</summary>{page}</details>"
