"""The report's top losses: the val images with the highest loss, each photo beside the map of
its predicted class, with a caption that wraps (long file names break, never overflow).

The maps are computed on the image scaled to MAP_SIDE on its long side (not at full
resolution: 224 px is what the page shows); the photo is embedded as a JPEG of that size.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from tlvision.report.interpretation import ValResults, top_losses
from tlvision.runs.reader import LoadedModel
from tlvision.tables import escape

TOP_LOSSES = 12
MAP_SIDE = 224  # class-map overlays are drawn on the image scaled to this long side
STYLE = """
.losses { display: flex; flex-wrap: wrap; gap: 16px; }
.losses figure { margin: 0; width: 452px; font-size: 0.85em; }
.losses .pair { display: flex; gap: 4px; align-items: flex-start; }
.losses img { width: 224px; }
.losses figcaption { overflow-wrap: anywhere; word-break: break-word; }
"""


def _image_tag(data: bytes, mime: str, alt: str, css_class: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:{mime};base64,{encoded}">'


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def top_losses_section(loaded: LoadedModel, results: ValResults, root: Path) -> str:
    """The val images with the highest loss, each photo beside its predicted class's map."""
    from tlvision.data.images import BadImageError, load_rgb_image
    from tlvision.inference.class_maps import class_mapper, class_maps, overlay_png

    loaded.model.cpu()
    mapper = class_mapper(loaded)
    losses, names = results.losses, results.class_names
    figures = []
    for index in top_losses(losses, TOP_LOSSES):
        path, true = results.predictions.samples[index]
        probabilities = results.predictions.probabilities[index]
        predicted = int(np.argmax(probabilities))
        try:
            maps = class_maps(mapper, load_rgb_image(path), max_side=MAP_SIDE)
        except BadImageError:
            continue
        overlay = overlay_png(
            maps.image, maps.probability_maps()[predicted], value_range=(0.0, 1.0)
        )
        verdict = "wrong" if predicted != true else "right"
        figures.append(
            f'<figure class="top-loss" data-path="{escape(path)}" data-loss="{losses[index]:.6f}">'
            '<div class="pair">'
            + _image_tag(_jpeg(maps.image), "image/jpeg", f"photo {path.name}", "photo")
            + _image_tag(overlay, "image/png", f"{names[predicted]} map of {path.name}", "overlay")
            + f"</div><figcaption><b>{escape(_relative(path, root))}</b><br>"
            f"true <b>{escape(names[true])}</b>, predicted "
            f'<b class="{verdict}">{escape(names[predicted])}</b> '
            f"p={probabilities[predicted]:.3f}<br>p(true)={probabilities[true]:.3f}, "
            f"loss {losses[index]:.3f}</figcaption></figure>"
        )
    return (
        "<h2>Top losses</h2><p>The val images the model is most wrong or least sure about "
        "(highest cross-entropy first). Each photo is beside the map of its predicted class: "
        "the per-location probability of that class (black 0, yellow 1), from the head read as "
        "a 1x1 convolution over the whole image.</p>"
        f'<div class="losses">{"".join(figures)}</div>'
    )
