"""tlvision: transfer learning from a pretrained ConvNet to your folder of labelled images.

From Python (the command line's commands as functions; nothing is printed unless verbose=True):

    import tlvision
    run = tlvision.train("DATA", epochs=5, out="runs/first")
    run.predict("photo.jpg", top_k=2)
    run.evaluate("DATA/val").accuracy
"""

from importlib import metadata

# The public API; none of it imports torch, numpy or PIL until a function is called, and
# importing it changes nothing in the process (the functions set what torch needs first).
from tlvision.api import (
    add_labels,
    advise,
    audit,
    check,
    compare,
    demo_data_dir,
    load,
    lr_find,
    probe,
    resume,
    train,
)
from tlvision.api.audit_report import AuditReport
from tlvision.api.rate import RangeTestReport
from tlvision.api.results import Advice, CheckReport, Comparison, ProbeTable, Run
from tlvision.errors import UserError
from tlvision.inference.prediction import ImageLike, Prediction

__version__ = metadata.version("tlvision")  # pyproject.toml's, the one definition

__all__ = [
    "Advice",
    "AuditReport",
    "CheckReport",
    "Comparison",
    "ImageLike",
    "Prediction",
    "ProbeTable",
    "RangeTestReport",
    "Run",
    "UserError",
    "__version__",
    "add_labels",
    "advise",
    "audit",
    "check",
    "compare",
    "demo_data_dir",
    "load",
    "lr_find",
    "probe",
    "resume",
    "train",
]
