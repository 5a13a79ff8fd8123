"""The demo image classifier taking raw images: ``image_classifier_jpeg``.

The same version as ``image_classifier`` (model, golden data, reports), served with an
image preprocessing stage declared in its config (see ``warpserve.server.preprocessing``):
its IMAGE input takes one encoded JPEG or PNG per row, of any size, which the server
decodes, resizes to 32x32 and normalises before batching. The training images are about
zero-mean with values within +-2, so pixels map 0..255 to -2..2 (mean 0.5, std 0.25).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import preprocessing

SOURCE = "image_classifier"
NAME = "image_classifier_jpeg"
MEAN = "0.5,0.5,0.5"
STD = "0.25,0.25,0.25"


def write_image_classifier_jpeg(repository: Path) -> None:
    """Derive the raw-image model from the built ``image_classifier`` in ``repository``."""
    source, target = repository / SOURCE, repository / NAME
    config = text_format.Parse((source / "config.pbtxt").read_text("utf-8"), mc.ModelConfig())
    image = config.input[0]
    height, width = image.dims[1], image.dims[2]  # the classifier takes [3, H, W]
    config.name = NAME
    image.data_type = mc.TYPE_STRING
    del image.dims[:]
    image.dims.append(1)
    values = {
        preprocessing.IMAGE_INPUT.key: image.name,
        preprocessing.IMAGE_SIZE.key: f"{height},{width}",
        preprocessing.IMAGE_MEAN.key: MEAN,
        preprocessing.IMAGE_STD.key: STD,
    }
    for key, value in values.items():
        config.parameters[key].string_value = value
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("config.pbtxt"))
    (target / "config.pbtxt").write_text(text_format.MessageToString(config), "utf-8")


def readme_section() -> list[str]:
    return [
        f"## {NAME}",
        "",
        f"`{SOURCE}` taking raw images: IMAGE is BYTES [batch, 1], one JPEG or PNG file per",
        "row, of any size; the server decodes, resizes and normalises it (config parameters",
        "image_input, image_size, image_mean, image_std). Ask PROBS for a class count to get",
        "`cat` or `dog`.",
        "",
    ]
