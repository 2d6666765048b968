"""The class-map overlay for one uploaded image, drawn by tlvision.inference.class_maps.

The map runs the conv body on the whole image at its own size (long side capped by
class_maps.MAX_SIDE), so it is a full pass of its own, not part of the prediction batches; the
app bounds how many run at once.
"""

from __future__ import annotations

from tlvision.inference.class_maps import ClassMapper, class_maps, overlay_png
from tlvision.serve.uploads import Upload, decode_upload


def render_class_map(
    mapper: ClassMapper, upload: Upload, class_name: str | None
) -> tuple[bytes, str]:
    """PNG of the probability map of `class_name` (default: the most likely) over the image,
    on an absolute 0..1 scale; also the class shown. Decodes the upload here, on the map's
    worker thread, so only the maps running hold a full-size image."""
    maps = class_maps(mapper, decode_upload(upload))
    if class_name is None:
        class_name = maps.top(1)[0][0]
    index = mapper.class_names.index(class_name)
    png = overlay_png(maps.image, maps.probability_maps()[index], value_range=(0.0, 1.0))
    return png, class_name
