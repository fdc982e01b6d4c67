"""TFLite metadata for MediaPipe Tasks: every exported precision loads in MediaPipe's
`ImageClassifier`, which names and ranks classes as LiteRT does on the same real images, and
the file with metadata still computes exactly what the file without it did.

The metadata is read back with MediaPipe's generated reader of the published schema
(`mediapipe.tasks.metadata.metadata_schema_py_generated`), independent of the writer.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from edgekd.converters.tflite import PRECISIONS, export_tflite
from edgekd.converters.tflite_metadata import METADATA_NAME, embed_metadata, read_labels
from edgekd.device.runtime.tflite import TFLiteRunner
from edgekd.training.models import build_model

CLASSES = ("airplane", "automobile", "bird")
SIZE = 32


@pytest.fixture(scope="module")
def real_images(cifar_jpeg: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real CIFAR-10 JPEGs of three classes: 40 a class to fit on, the next 8 to check."""
    images, labels = [], []
    for c, name in enumerate(CLASSES):
        files = sorted((cifar_jpeg / name).glob("*.jpg"))[:48]
        images += [np.asarray(Image.open(f).convert("RGB")) for f in files]
        labels += [c] * len(files)
    return np.stack(images).astype(np.uint8), np.asarray(labels)


def _train_part(labels: np.ndarray) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:40] for c in range(len(CLASSES))])


@pytest.fixture(scope="module")
def model(real_images) -> keras.Model:
    """A tiny ResNet fitted a few steps on the real images."""
    images, labels = real_images
    train = _train_part(labels)
    keras.utils.set_random_seed(3)
    model = build_model("resnet10", num_classes=len(CLASSES), width=4, input_shape=(SIZE, SIZE, 3))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images[train].astype(np.float32), labels[train], batch_size=20, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, real_images) -> dict[str, Path]:
    """The model as a `.tflite` per precision (int8 with uint8 I/O, as export writes it):
    `<precision>.tflite` bare and `<precision>-meta.tflite` with metadata; plus
    `probabilities-meta.tflite`."""
    images, labels = real_images
    train = _train_part(labels)
    out = tmp_path_factory.mktemp("metadata")
    files: dict[str, Path] = {}
    for precision in PRECISIONS:
        bare = out / f"{precision}.tflite"
        io = "uint8" if precision == "int8" else "float32"
        export_tflite(
            model, bare, precision=precision, representative=images[train], io_dtype=io
        )
        meta = out / f"{precision}-meta.tflite"
        shutil.copyfile(bare, meta)
        embed_metadata(
            meta, CLASSES, name="tiny-student", version="3", description="a test model",
            author="edgekd tests", license="Apache-2.0",
        )  # fmt: skip
        files[precision], files[f"{precision}-meta"] = bare, meta
    probs = keras.Sequential([model, keras.layers.Softmax()])
    files["probabilities"] = export_tflite(probs, out / "probabilities-meta.tflite")
    embed_metadata(files["probabilities"], CLASSES, name="p", output="probabilities")
    return files


@pytest.fixture(scope="module")
def check_images(real_images) -> np.ndarray:
    images, labels = real_images
    return np.concatenate([np.flatnonzero(labels == c)[40:] for c in range(len(CLASSES))])


def _mediapipe_top1(path: Path, images: np.ndarray) -> list[tuple[int, str, float]]:
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(path)), max_results=1
    )
    got = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            result = classifier.classify(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
            )
            top = result.classifications[0].categories[0]
            got.append((top.index, top.category_name, top.score))
    return got


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mediapipe_ranks_and_names_as_litert(precision, exported, real_images, check_images):
    images = real_images[0][check_images]
    path = exported[f"{precision}-meta"]
    litert = TFLiteRunner(path).predict(images)
    got = _mediapipe_top1(path, images)
    assert [i for i, _, _ in got] == list(litert.argmax(1))
    assert [n for _, n, _ in got] == [CLASSES[i] for i in litert.argmax(1)]
    np.testing.assert_allclose([s for _, _, s in got], litert.max(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_metadata_leaves_litert_outputs_bit_identical(precision, exported, real_images):
    images = real_images[0]
    bare = TFLiteRunner(exported[precision]).predict(images)
    meta = TFLiteRunner(exported[f"{precision}-meta"]).predict(images)
    assert bare.dtype == meta.dtype
    np.testing.assert_array_equal(meta, bare)


def _read(path: Path):
    pytest.importorskip("mediapipe")
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from tensorflow.lite.python import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}  # fmt: skip
    buf = model.Buffers(entries[METADATA_NAME]).DataAsNumpy().tobytes()
    assert fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    return fb, fb.ModelMetadata.GetRootAs(buf, 0)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_metadata_reads_back(precision, exported):
    path = exported[f"{precision}-meta"]
    fb, meta = _read(path)
    assert meta.Name() == b"tiny-student" and meta.Version() == b"3"
    assert meta.Description() == b"a test model" and meta.License() == b"Apache-2.0"
    assert meta.Author() == b"edgekd tests" and meta.MinParserVersion() == b"1.0.0"
    assert meta.SubgraphMetadataLength() == 1
    graph = meta.SubgraphMetadata(0)
    tin, tout = graph.InputTensorMetadata(0), graph.OutputTensorMetadata(0)

    content = tin.Content()
    assert content.ContentPropertiesType() == fb.ContentProperties.ImageProperties
    props = fb.ImageProperties()
    props.Init(content.ContentProperties().Bytes, content.ContentProperties().Pos)
    assert props.ColorSpace() == fb.ColorSpaceType.RGB
    assert (props.DefaultSize().Width(), props.DefaultSize().Height()) == (SIZE, SIZE)
    unit = tin.ProcessUnits(0)
    assert unit.OptionsType() == fb.ProcessUnitOptions.NormalizationOptions
    norm = fb.NormalizationOptions()
    norm.Init(unit.Options().Bytes, unit.Options().Pos)
    assert list(norm.MeanAsNumpy()) == [0, 0, 0] and list(norm.StdAsNumpy()) == [1, 1, 1]
    assert (tin.Stats().Min(0), tin.Stats().Max(0)) == (0.0, 255.0)

    assert tout.Name() == b"logits"
    assert tout.Content().ContentPropertiesType() == fb.ContentProperties.FeatureProperties
    label_file = tout.AssociatedFiles(0)
    assert label_file.Type() == fb.AssociatedFileType.TENSOR_AXIS_LABELS
    assert label_file.Name() == b"labels.txt"
    assert read_labels(path) == list(CLASSES)
    assert zipfile.ZipFile(path).namelist() == ["labels.txt"]


def test_probabilities_output_sums_to_one(exported, real_images):
    path = exported["probabilities"]
    _, meta = _read(path)
    tout = meta.SubgraphMetadata(0).OutputTensorMetadata(0)
    assert tout.Name() == b"probabilities"
    assert (tout.Stats().Min(0), tout.Stats().Max(0)) == (0.0, 1.0)
    probs = TFLiteRunner(path).predict(real_images[0])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_label_count_must_match_the_output(exported, tmp_path):
    path = tmp_path / "m.tflite"
    shutil.copyfile(exported["float32"], path)
    with pytest.raises(ValueError, match=rf"{path}: 2 labels for an output of 3 classes"):
        embed_metadata(path, CLASSES[:2], name="m")
    with pytest.raises(ValueError, match=r"non-empty single lines"):
        embed_metadata(path, ("a", "b\nc", "d"), name="m")
    with pytest.raises(ValueError, match=r"unknown output 'softmax'"):
        embed_metadata(path, CLASSES, name="m", output="softmax")
    assert path.read_bytes() == exported["float32"].read_bytes()  # untouched on error


def test_refuses_a_file_that_is_not_tflite_or_already_packed(exported, tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match=rf"{junk}: not a TFLite flatbuffer"):
        embed_metadata(junk, CLASSES, name="m")
    with pytest.raises(ValueError, match=r"already carries associated files"):
        embed_metadata(exported["float32-meta"], CLASSES, name="m")


def test_mediapipe_refuses_a_float_file_without_metadata(exported):
    """Why the metadata is there: MediaPipe needs NormalizationOptions for a float input."""
    with pytest.raises(Exception, match="NormalizationOptions"):
        _mediapipe_top1(exported["float32"], np.zeros((1, SIZE, SIZE, 3), np.uint8))


# logits through export_model is the smoke export's path (test_the_smoke_export_loads_in_mediapipe);
# its own case here runs with -m exhaustive.
@pytest.mark.parametrize(
    "output", [pytest.param("logits", marks=pytest.mark.exhaustive), "probabilities"]
)
def test_export_writes_metadata_cards_and_parity_for_the_output(
    output, model, real_images, check_images, tmp_path
):
    """`export_model` embeds the metadata in every `.tflite` precision; with probabilities the
    files end in a softmax, the card says so, parity compares probabilities, and `edgekd
    predict` takes the file's probabilities as they are."""
    from edgekd.device.predict import predict_files
    from edgekd.export.exporter import export_model
    from edgekd.maths.fusion import softmax
    from edgekd.recipe import ExportConfig

    images, labels = real_images
    cfg = ExportConfig.model_validate({
        "formats": ["tflite"], "precisions": list(PRECISIONS), "output": output,
        "tolerance_pp": 100.0, "metadata": {"version": "7", "license": "Apache-2.0"},
    })  # fmt: skip
    context = {"run": "t", "recipe": "tiny", "classes": list(CLASSES)}
    calib = images[_train_part(labels)]
    check = images[check_images]
    variants = export_model(
        model, "student", tmp_path, cfg, calib, check, labels[check_images], context
    )
    assert [v.precision for v in variants] == list(PRECISIONS)
    logits = model.predict(check.astype(np.float32), verbose=0)
    for v in variants:
        fb, meta = _read(v.path)
        assert meta.Name() == b"tiny-student" and meta.Version() == b"7"
        assert meta.License() == b"Apache-2.0" and meta.Author() is None
        assert output.encode() in meta.Description()
        assert meta.SubgraphMetadata(0).OutputTensorMetadata(0).Name() == output.encode()
        assert read_labels(v.path) == list(CLASSES)
        want = "logits" if output == "logits" else "probabilities (softmax)"
        assert v.card["output"]["meaning"] == f"{want}, labels.txt order"
        got = TFLiteRunner(v.path).predict(check)
        ref = softmax(logits) if output == "probabilities" else logits
        if v.precision == "float32":
            np.testing.assert_allclose(got, ref, atol=1e-4)
            assert v.card["parity"]["max_logit_error"] < 1e-4
            assert v.card["parity"]["top1_agreement"] == 1.0
        if output == "probabilities":
            np.testing.assert_allclose(got.sum(1), 1.0, atol=0.02)  # int8: 1/256 steps
        top = _mediapipe_top1(v.path, check)
        assert [i for i, _, _ in top] == list(got.argmax(1))
        assert [n for _, n, _ in top] == [CLASSES[i] for i in got.argmax(1)]

    f32 = variants[0].path
    _, _, (pred,) = predict_files(f32, [_png(check[0], tmp_path)], top_k=3)
    assert pred.labels[0] == CLASSES[int(logits[0].argmax())]
    np.testing.assert_allclose(pred.scores, np.sort(softmax(logits[:1])[0])[::-1], atol=1e-3)


def _png(image: np.ndarray, folder: Path) -> Path:
    path = folder / "image.png"  # lossless: the pixels the model saw
    Image.fromarray(image).save(path)
    return path


def test_the_smoke_export_loads_in_mediapipe(smoke_exported):
    """`edgekd export` as a user runs it: every `.tflite` it wrote (the student and the
    members) names its classes as labels.txt does, and MediaPipe ranks the run's validation
    images as LiteRT does."""
    from edgekd.data.dataset import prepare_data
    from edgekd.recipe import build_recipe
    from edgekd.training.run import RunDir

    run = RunDir.open_existing(smoke_exported)
    val = prepare_data(build_recipe(run.manifest["recipe"]), progress=False).val
    export = smoke_exported / "export"
    files = sorted(export.glob("*.tflite")) + sorted((export / "members").glob("*.tflite"))
    assert {"student.tflite", "student-int8.tflite"} <= {f.name for f in files}
    labels = (export / "labels.txt").read_text().splitlines()
    images = val.images[:16]
    for path in files:
        names = read_labels(path)
        if path.parent == export or path.name.startswith("generalist"):
            assert names == labels
        _, meta = _read(path)
        assert meta.Name().decode() == f"{run.manifest['recipe']['name']}-{path.stem.split('-')[0]}"
        litert = TFLiteRunner(path).predict(images)
        top = _mediapipe_top1(path, images)
        assert [i for i, _, _ in top] == list(litert.argmax(1)), path.name
        assert [n for _, n, _ in top] == [names[i] for i in litert.argmax(1)], path.name


def test_the_contract_names_what_the_output_means():
    from edgekd.contract import ModelCard, output_meaning, outputs_probabilities

    assert output_meaning("logits") == "logits, labels.txt order"
    assert output_meaning("probabilities") == "probabilities (softmax), labels.txt order"
    with pytest.raises(ValueError, match="unknown output 'scores'"):
        output_meaning("scores")
    card = ModelCard(format="tflite", precision="float32")
    assert not outputs_probabilities(None) and not outputs_probabilities(card)
    card.output = {"meaning": output_meaning("probabilities")}
    assert outputs_probabilities(card)
    card.output = {"meaning": output_meaning("logits")}
    assert not outputs_probabilities(card)


def test_the_recipe_holds_the_output_and_metadata_options():
    from edgekd.recipe import ExportConfig

    cfg = ExportConfig()
    assert cfg.output == "logits" and cfg.metadata.version == "1" and cfg.metadata.name is None
    with pytest.raises(ValueError, match="output"):
        ExportConfig.model_validate({"output": "softmax"})
    with pytest.raises(ValueError, match="licence|license|extra"):
        ExportConfig.model_validate({"metadata": {"licence": "MIT"}})
