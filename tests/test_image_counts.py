"""One count of images (issue 26): with unreadable files the log, summary.json and the report
give the images the run read, and the report lists the ones it left out."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import write_dataset

import tlvision


def test_log_summary_and_report_count_the_same_readable_images(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")  # 16 train, 8 val
    broken = [data / "train" / "circles" / "broken.jpg", data / "train" / "squares" / "cut.jpg"]
    broken[0].write_bytes(b"not a jpeg at all")
    broken[1].write_bytes((data / "train" / "squares" / "squares_0.jpg").read_bytes()[:200])
    lines: list[str] = []
    run = tlvision.train(
        data, out=tmp_path / "run", input_size=64, epochs=2, no_cache=True, workers=0,
        device="cpu", log=lines.append,
    )  # fmt: skip
    logged = [line for line in lines if " train x " in line]
    assert len(logged) == 1 and "16 train x 1 views / 8 val images" in logged[0], lines
    assert run.summary["train_images"] == 16 and run.summary["val_images"] == 8
    assert {entry["path"] for entry in run.summary["skipped_files"]} == {str(p) for p in broken}
    page = (run.run_dir / "report.html").read_text()
    sizes = page[page.index('id="dataset-sizes"') :]
    assert re.search(r"<td>all</td><td>16</td><td>8</td>", sizes[: sizes.index("</table>")])
    assert "Left out, unreadable (2)" in page
    assert all(str(path) in page for path in broken)
