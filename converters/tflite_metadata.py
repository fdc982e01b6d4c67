"""TFLite metadata (labels, normalisation, image properties) in an exported `.tflite` file.

MediaPipe Tasks' `ImageClassifier` (and the TFLite Task Library) read a model's description
from the metadata flatbuffer of TFLite's published schema, `metadata_schema.fbs`
(tensorflow/tflite-support `tensorflow_lite_support/metadata/metadata_schema.fbs`, the same
file MediaPipe ships as `mediapipe/tasks/metadata/metadata_schema.fbs`). This module writes
that flatbuffer itself with the `flatbuffers` builder (a TensorFlow dependency already), table
by table with the schema's field slots, instead of using tflite-support's writers: those need
protobuf 3.20 (TensorFlow 2.21 needs >= 6.31) and libusb, and MediaPipe's own writers do not
import from its wheel (`mediapipe.tasks.cc` is missing). Only the tables an image classifier
needs are written: ModelMetadata, SubGraphMetadata, TensorMetadata, Content with
ImageProperties (RGB, the default size) or FeatureProperties, ProcessUnit with
NormalizationOptions, Stats and AssociatedFile (TENSOR_AXIS_LABELS).

Packing follows tflite-support's `MetadataPopulator` (`tensorflow_lite_support/metadata/
python/metadata.py`): the metadata buffer becomes a new `Buffer` of the model, named by a
`Metadata` entry "TFLITE_METADATA"; the model is re-serialised (TensorFlow's own
`flatbuffer_utils` round trip, which the converter already applies to every file it writes),
and the labels file is appended after the flatbuffer as a zip archive. The file stays a valid
TFLite flatbuffer (a zip is read from its end), so LiteRT runs it unchanged.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import flatbuffers
import numpy as np

from edgekd.atomic import atomic_path

METADATA_NAME = "TFLITE_METADATA"  # the Model.metadata entry MediaPipe looks for
METADATA_IDENTIFIER = b"M001"  # metadata_schema.fbs: file_identifier
TFLITE_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"  # nothing written here is newer than the schema's first version
OUTPUTS = ("logits", "probabilities")

# metadata_schema.fbs enums and union members used here.
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_RGB = 1  # ColorSpaceType
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties union
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union


def embed_metadata(
    path: str | Path,
    labels: Sequence[str],
    *,
    name: str,
    version: str = "",
    description: str = "",
    author: str = "",
    license: str = "",
    output: str = "logits",
    labels_file: str = "labels.txt",
) -> Path:
    """Write image-classifier metadata and the labels into the `.tflite` file at `path`.

    Args:
        path: a `.tflite` file with one input (N, H, W, 3) of RGB pixels 0..255 and one
            output (N, classes); rewritten atomically.
        labels: class names, in output order; as many as the output is wide.
        name, version, description, author, license: ModelMetadata's fields.
        output: "logits" or "probabilities": what the output holds (its metadata name and
            description say so; probabilities also get Stats 0..1).
        labels_file: the associated file's name inside the archive.

    Raises:
        ValueError: a file that is not a single-input, single-output image classifier, labels
            that do not match the output's width, an unknown `output`.
    """
    path = Path(path)
    model = path.read_bytes()
    _check_no_archive(path, model)
    height, width, classes = _io_shape(path, model)
    labels = [str(label) for label in labels]
    if len(labels) != classes:
        raise ValueError(
            f"{path}: {len(labels)} labels for an output of {classes} classes; give one name "
            "per output, in output order"
        )
    bad = [label for label in labels if not label or "\n" in label or "\r" in label]
    if bad:
        raise ValueError(f"{path}: labels must be non-empty single lines, got {bad!r}")
    if output not in OUTPUTS:
        raise ValueError(f"{path}: unknown output {output!r}; expected one of {OUTPUTS}")
    meta = metadata_buffer(
        name=name, version=version, description=description, author=author,
        license=license, output=output, size=(width, height), labels_file=labels_file,
    )  # fmt: skip
    packed = _with_metadata_buffer(model, meta)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(labels_file, "\n".join(labels) + "\n")
    with atomic_path(path) as tmp:
        tmp.write_bytes(packed + archive.getvalue())
    return path


def metadata_buffer(
    *,
    name: str,
    version: str,
    description: str,
    author: str,
    license: str,
    output: str,
    size: tuple[int, int],
    labels_file: str,
) -> bytes:
    """The ModelMetadata flatbuffer ("M001") of a one-input image classifier.

    `size` is the input's (width, height); the input is RGB pixels 0..255 with mean 0 and
    std 1 (the model normalises inside), the output's axis labels are `labels_file`.
    """
    b = flatbuffers.Builder(1024)
    probabilities = output == "probabilities"

    # Input: image, RGB, default size, normalisation mean 0 / std 1, values 0..255.
    size_t = _table(b, uint32=[(0, size[0]), (1, size[1])])
    image_props = _table(b, int8=[(0, _RGB)], offsets=[(1, size_t)])
    in_content = _table(b, uint8=[(0, _IMAGE_PROPERTIES)], offsets=[(1, image_props)])
    norm = _table(
        b, offsets=[(0, _floats(b, [0.0, 0.0, 0.0])), (1, _floats(b, [1.0, 1.0, 1.0]))]
    )
    unit = _table(b, uint8=[(0, _NORMALIZATION_OPTIONS)], offsets=[(1, norm)])
    in_stats = _table(b, offsets=[(0, _floats(b, [255.0])), (1, _floats(b, [0.0]))])
    in_tensor = _table(
        b,
        offsets=[
            (0, b.CreateString("image")),
            (1, b.CreateString("RGB pixels 0..255 (NHWC), fed as they are")),
            (3, in_content),
            (4, _vector(b, [unit])),
            (5, in_stats),
        ],
    )

    # Output: one score per class, labelled by the associated labels file.
    label_file = _table(
        b,
        int8=[(2, _TENSOR_AXIS_LABELS)],
        offsets=[
            (0, b.CreateString(labels_file)),
            (1, b.CreateString("class names, one a line, in output order")),
        ],
    )
    features = _table(b)
    out_content = _table(b, uint8=[(0, _FEATURE_PROPERTIES)], offsets=[(1, features)])
    out_fields = [
        (0, b.CreateString(output)),
        (
            1,
            b.CreateString(
                "class probabilities (softmax)" if probabilities else "class logits (no softmax)"
            ),
        ),
        (3, out_content),
        (6, _vector(b, [label_file])),
    ]
    if probabilities:
        out_fields.append((5, _table(b, offsets=[(0, _floats(b, [1.0])), (1, _floats(b, [0.0]))])))
    out_tensor = _table(b, offsets=out_fields)

    subgraph = _table(
        b, offsets=[(2, _vector(b, [in_tensor])), (3, _vector(b, [out_tensor]))]
    )
    fields = [(0, b.CreateString(name)), (3, _vector(b, [subgraph]))]
    for slot, text in ((1, description), (2, version), (4, author), (5, license)):
        if text:
            fields.append((slot, b.CreateString(text)))
    fields.append((7, b.CreateString(MIN_PARSER_VERSION)))
    root = _table(b, offsets=fields)
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def _table(
    b: flatbuffers.Builder,
    *,
    offsets: Sequence[tuple[int, int]] = (),
    int8: Sequence[tuple[int, int]] = (),
    uint8: Sequence[tuple[int, int]] = (),
    uint32: Sequence[tuple[int, int]] = (),
) -> int:
    """One table; each field given as (slot in the schema's field order, value). Every
    child (string, vector, table) must already be built."""
    slots = [s for fields in (offsets, int8, uint8, uint32) for s, _ in fields]
    b.StartObject(max(slots, default=-1) + 1)
    for slot, off in offsets:
        b.PrependUOffsetTRelativeSlot(slot, off, 0)
    for slot, value in uint32:
        b.PrependUint32Slot(slot, value, 0)
    for slot, value in int8:
        b.PrependInt8Slot(slot, value, 0)
    for slot, value in uint8:
        b.PrependUint8Slot(slot, value, 0)
    return b.EndObject()


def _vector(b: flatbuffers.Builder, tables: Sequence[int]) -> int:
    b.StartVector(4, len(tables), 4)
    for off in reversed(tables):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values: Sequence[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return b.EndVector()


def _with_metadata_buffer(model: bytes, meta: bytes) -> bytes:
    """`model` re-serialised with `meta` as its "TFLITE_METADATA" buffer (replacing one
    already there), as tflite-support's MetadataPopulator does."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta, np.uint8)
    obj.metadata = list(obj.metadata or [])
    obj.buffers = list(obj.buffers or [])
    for entry in obj.metadata:
        if entry.name.decode() == METADATA_NAME:
            obj.buffers[entry.buffer] = buffer
            break
    else:
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        obj.buffers.append(buffer)
        entry.buffer = len(obj.buffers) - 1
        obj.metadata.append(entry)
    return flatbuffer_utils.convert_object_to_bytearray(obj)


def _check_no_archive(path: Path, model: bytes) -> None:
    if zipfile.is_zipfile(io.BytesIO(model)):
        raise ValueError(
            f"{path}: already carries associated files (a zip archive after the model); "
            "embed metadata into the converter's output, once"
        )


def _io_shape(path: Path, model: bytes) -> tuple[int, int, int]:
    """(height, width, classes) of a one-input NHWC RGB, one-output (N, classes) model."""
    from tensorflow.lite.python import schema_py_generated as schema

    if model[4:8] != TFLITE_IDENTIFIER:
        raise ValueError(f"{path}: not a TFLite flatbuffer (no {TFLITE_IDENTIFIER!r} identifier)")
    graph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    if graph.InputsLength() != 1 or graph.OutputsLength() != 1:
        raise ValueError(
            f"{path}: image classifier metadata needs one input and one output, the model has "
            f"{graph.InputsLength()} and {graph.OutputsLength()}"
        )
    shape_in = graph.Tensors(graph.Inputs(0)).ShapeAsNumpy()
    shape_out = graph.Tensors(graph.Outputs(0)).ShapeAsNumpy()
    if len(shape_in) != 4 or shape_in[3] != 3:
        raise ValueError(f"{path}: the input is {list(shape_in)}, not (N, H, W, 3) RGB pixels")
    if len(shape_out) != 2:
        raise ValueError(f"{path}: the output is {list(shape_out)}, not (N, classes)")
    return int(shape_in[1]), int(shape_in[2]), int(shape_out[1])


def read_labels(path: str | Path, labels_file: str = "labels.txt") -> list[str]:
    """The labels packed into a `.tflite` file by `embed_metadata`."""
    with zipfile.ZipFile(Path(path)) as zf:
        return zf.read(labels_file).decode().splitlines()
