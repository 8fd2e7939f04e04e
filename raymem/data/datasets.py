"""Data sets for the runner: load a data set by name, in a fixed example order.

Index i of a split always means the same example (the paper's released indices are tfds order),
so every loader here is deterministic and never downloads anything at run time.

- `digits` (scikit-learn's bundled 8x8 digits, fixed split), `mnist`, `cifar10`, `cifar100` and the
  local `npz:` / `parquet:` files and `imagefolder:` folders load fully into memory as an `ArrayDataset`.
- `imagenet2012` streams from its tfds TFRecord files as a `StreamingDataset`; only its labels are
  held in memory.

TensorFlow and tensorflow_datasets are imported inside the functions that need them, so that
`digits` (and importing this module) never loads TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from raymem.errors import RaymemError
from raymem.store.safe_files import load_npz

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

DATA_DIR_ENV = "RAYMEM_DATA_DIR"
NPZ_PREFIX = "npz:"
PARQUET_PREFIX = "parquet:"
IMAGEFOLDER_PREFIX = "imagefolder:"
#: Any image-classification TFDS builder prepared under the data dir: ``tfds:NAME`` or ``tfds:NAME:CONFIG``.
TFDS_PREFIX = "tfds:"
#: The config keys that say how a data set is read (keyword arguments of :func:`load_dataset`).
DATA_OPTION_KEYS = ("image_size", "train_split", "test_split")
#: File name endings of the images an ``imagefolder:`` set reads (decoded by tf.io.decode_image).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

TFDS_ARRAY_NAMES = ("mnist", "cifar10", "cifar100")
TFDS_STREAMING_NAMES = ("imagenet2012",)
DATASET_NAMES: tuple[str, ...] = ("digits", *TFDS_ARRAY_NAMES, *TFDS_STREAMING_NAMES)

# The tfds split that plays the part of raymem's "test" split (ImageNet's test split has no labels).
_TFDS_TEST_SPLIT = {"imagenet2012": "validation"}

DIGITS_N_TRAIN = 1257  # of 1,797; the other 540 are the test split
DIGITS_SPLIT_SEED = 0  # legacy RandomState stream: numpy keeps it fixed across versions (NEP 19)

IMAGENET_IMAGE_SIZE = 224
STREAM_SHUFFLE_BUFFER = 4096  # encoded examples held by a shuffled streaming training pipeline
_TFDS_READ_BATCH = 4096  # examples per batch while reading a tfds split into memory
_LABEL_READ_BATCH = 65536  # labels per batch during the label-only pass of a streaming data set

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_PARQUET_HELP = (
    "a parquet: data set is a directory holding train.parquet and test.parquet, each with an integer "
    "'label' column and either an 'image' column (PNG/JPEG bytes, all one size) or a 'features' "
    "column (lists of floats, all one length)"
)


def _import_tensorflow():
    """Returns the tensorflow module, imported quietly on first use."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


def _import_tfds():
    """Returns the tensorflow_datasets module, imported quietly on first use."""
    _import_tensorflow()
    import tensorflow_datasets

    return tensorflow_datasets


def labels_sha256(y_train: np.ndarray, y_test: np.ndarray) -> str:
    """Returns the hex sha256 of y_train then y_test, each as int64 little-endian bytes."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(y_train, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(y_test, dtype="<i8").tobytes())
    return digest.hexdigest()


def _fingerprint(name: str, num_classes: int, input_shape: tuple[int, ...],
                 y_train: np.ndarray, y_test: np.ndarray) -> dict:
    """Returns the JSON-ready identity of a data set (see `ArrayDataset.fingerprint`)."""
    return {
        "name": name,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "num_classes": int(num_classes),
        "input_shape": [int(size) for size in input_shape],
        "labels_sha256": labels_sha256(y_train, y_test),
    }


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A data set held in memory: float32 inputs (already normalised) and int64 labels.

    Inputs are channels-last images (N, H, W, C) or feature vectors (N, D).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()  # label -> name, where the data set names its classes (imagefolder:)

    def __post_init__(self) -> None:
        for key in ("x_train", "x_test"):
            if getattr(self, key).dtype != np.float32:
                raise ValueError(f"ArrayDataset.{key} must be float32, got {getattr(self, key).dtype}")
        for key in ("y_train", "y_test"):
            if getattr(self, key).dtype != np.int64 or getattr(self, key).ndim != 1:
                raise ValueError(f"ArrayDataset.{key} must be a 1-D int64 array")
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("ArrayDataset inputs and labels differ in length")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError("ArrayDataset x_train and x_test differ in input shape")

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Returns the shape of one input, e.g. (32, 32, 3) or (64,)."""
        return tuple(self.x_train.shape[1:])

    def fingerprint(self) -> dict:
        """Returns {"name", "n_train", "n_test", "num_classes", "input_shape", "labels_sha256"}."""
        return _fingerprint(self.name, self.num_classes, self.input_shape, self.y_train, self.y_test)


@dataclass(frozen=True, eq=False)
class StreamingDataset:
    """A tfds image data set read from its TFRecord files, never fully in memory.

    Labels are held in memory; images are decoded, resized (shorter side to `image_size`),
    centre-cropped to `image_size` x `image_size` and scaled to [0, 1] as they stream. Random
    crops and flips are the trainer's augmentation.
    """

    name: str
    n_train: int
    n_test: int
    num_classes: int
    image_size: int
    y_train: np.ndarray
    y_test: np.ndarray
    data_dir: str | None = None  # the tfds data directory; None means tfds's default

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    def fingerprint(self) -> dict:
        """Returns {"name", "n_train", "n_test", "num_classes", "input_shape", "labels_sha256"}."""
        return _fingerprint(self.name, self.num_classes, self.input_shape, self.y_train, self.y_test)

    def train_dataset(self, indices: np.ndarray | None, *, shuffle_seed: int | None = None,
                      batch_size: int | None = None, labels: np.ndarray | None = None) -> "tf.data.Dataset":
        """Returns a tf.data.Dataset of (image, label) for the training examples at `indices`.

        indices None means all training examples. Without `shuffle_seed` the examples come in
        index order; with it they pass through a shuffle buffer of STREAM_SHUFFLE_BUFFER that
        reshuffles every epoch. Unselected examples are skipped before their images are decoded.
        With `labels` (one per training example, e.g. a run's canary-flipped labels) each
        example's label is looked up by its index instead of read from the files. With
        `batch_size` the dataset is batched and prefetched.
        """
        tf = _import_tensorflow()
        examples = _encoded_examples(self.name, self.data_dir, "train").enumerate()
        if indices is not None:
            selected = tf.constant(self._selection_mask(indices))
            examples = examples.filter(lambda index, _: tf.gather(selected, index))
        if labels is not None:
            table = tf.constant(np.asarray(labels, dtype=np.int64))
            examples = examples.map(lambda index, ex: (index, {"image": ex["image"], "label": tf.gather(table, index)}))
        examples = examples.map(lambda _, example: example)
        # The filter hides the size; stating it lets Keras count steps (and fails loudly if the files disagree).
        count = self.n_train if indices is None else len(indices)
        examples = examples.apply(tf.data.experimental.assert_cardinality(count))
        if shuffle_seed is not None:
            examples = examples.shuffle(STREAM_SHUFFLE_BUFFER, seed=shuffle_seed,
                                        reshuffle_each_iteration=True)
        return self._decoded(examples, batch_size)

    def eval_dataset(self, split: str, *, batch_size: int | None = None) -> "tf.data.Dataset":
        """Returns a tf.data.Dataset of (image, label) for every example of split "train" or "test",
        in index order, unshuffled (batched and prefetched when `batch_size` is given)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self._decoded(_encoded_examples(self.name, self.data_dir, split), batch_size)

    def _selection_mask(self, indices: np.ndarray) -> np.ndarray:
        """Returns a bool array over the training set, True at `indices` (which must be unique)."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError("indices must be a 1-D integer array")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_train):
            raise ValueError(f"indices must lie in [0, {self.n_train})")
        mask = np.zeros(self.n_train, dtype=bool)
        mask[indices] = True
        if int(mask.sum()) != len(indices):
            raise ValueError("indices must not repeat")
        return mask

    def _decoded(self, examples: "tf.data.Dataset", batch_size: int | None) -> "tf.data.Dataset":
        """Returns `examples` (dicts with encoded images) as (image, label) pairs."""
        tf = _import_tensorflow()
        size = self.image_size
        pairs = examples.map(lambda example: (_decode_centre_crop(example["image"], size), example["label"]),
                             num_parallel_calls=tf.data.AUTOTUNE)
        if batch_size is not None:
            pairs = pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return pairs


def _decode_centre_crop(image_bytes: "tf.Tensor", image_size: int) -> "tf.Tensor":
    """Returns the float32 RGB image in [0, 1], shorter side resized to image_size, centre-cropped
    to image_size x image_size."""
    tf = _import_tensorflow()
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    height_width = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = image_size / tf.reduce_min(height_width)
    new_size = tf.maximum(tf.cast(tf.round(height_width * scale), tf.int32), image_size)
    image = tf.image.resize(image, new_size, antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def resolve_data_dir(data_dir: str | None) -> str | None:
    """Returns the tfds data directory to read: `data_dir`, else $RAYMEM_DATA_DIR, else None
    (tfds's own default, $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    if data_dir:
        return os.fspath(data_dir)
    return os.environ.get(DATA_DIR_ENV) or None


def data_options(config: dict) -> dict:
    """The keyword arguments of :func:`load_dataset` a (stored or live) config dict gives: the keys of
    :data:`DATA_OPTION_KEYS` it sets (a run stored before a key existed reads with its default)."""
    return {key: config[key] for key in DATA_OPTION_KEYS if config.get(key) is not None}


def load_dataset(name: str, data_dir: str | None = None, image_size: int | None = None, *,
                 train_split: str = "train", test_split: str = "test") -> ArrayDataset | StreamingDataset:
    """Returns the data set called `name` (one of DATASET_NAMES, "npz:FILE", "parquet:DIR" or "imagefolder:DIR").

    tfds data sets are read from `data_dir`, else $RAYMEM_DATA_DIR, else tfds's default, and are
    never downloaded here. `image_size` resizes the images of an imagefolder: set to that square size;
    `train_split` / `test_split` name the splits of a tfds: builder that play raymem's train and test.
    Raises RaymemError for an unknown name or missing/invalid data.
    """
    if name == "digits":
        return _load_digits()
    if name in TFDS_ARRAY_NAMES:
        return _load_tfds_arrays(name, resolve_data_dir(data_dir))
    if name in TFDS_STREAMING_NAMES:
        return _load_tfds_streaming(name, resolve_data_dir(data_dir))
    if name.startswith(NPZ_PREFIX):
        return _load_npz(name, name[len(NPZ_PREFIX):])
    if name.startswith(PARQUET_PREFIX):
        return _load_parquet(name, name[len(PARQUET_PREFIX):])
    if name.startswith(IMAGEFOLDER_PREFIX):
        return _load_imagefolder(name, name[len(IMAGEFOLDER_PREFIX):], image_size)
    if name.startswith(TFDS_PREFIX):
        return _load_tfds_builder(name, resolve_data_dir(data_dir), {"train": train_split, "test": test_split})
    raise RaymemError(
        f"Unknown data set {name!r}; use one of {', '.join(DATASET_NAMES)}, "
        f"or {NPZ_PREFIX}/path/to/file.npz, {PARQUET_PREFIX}/path/to/directory or {IMAGEFOLDER_PREFIX}/path/to/folder."
    )


# --- digits --------------------------------------------------------------------------------------


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Returns (train indices, test indices) into sklearn's load_digits(), each sorted; fixed forever."""
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(1797)
    return np.sort(order[:DIGITS_N_TRAIN]), np.sort(order[DIGITS_N_TRAIN:])


def _load_digits() -> ArrayDataset:
    """Returns scikit-learn's 8x8 digits as (N, 8, 8, 1) images in [0, 1], split by digits_split()."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., np.newaxis]
    labels = bunch.target.astype(np.int64)
    train, test = digits_split()
    return ArrayDataset("digits", images[train], labels[train], images[test], labels[test],
                        num_classes=int(labels.max()) + 1)


# --- tfds ----------------------------------------------------------------------------------------


def _tfds_split_name(name: str, split: str) -> str:
    """Returns the tfds split that holds raymem's `split` ("train" or "test") of data set `name`."""
    return _TFDS_TEST_SPLIT.get(name, "test") if split == "test" else "train"


def _missing_tfds_data(name: str, where: str) -> RaymemError:
    """Returns the error for a tfds data set that is not prepared in directory `where`."""
    if name == "imagenet2012":
        how = (f"place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {where}/downloads/manual "
               f"and run `python -c 'import tensorflow_datasets as tfds; "
               f"tfds.builder(\"{name}\", data_dir=\"{where}\").download_and_prepare()'`")
    else:
        how = (f"run `python -c 'import tensorflow_datasets as tfds; "
               f"tfds.builder(\"{name}\", data_dir=\"{where}\").download_and_prepare()'` "
               f"on a machine with internet and copy {where} here")
    return RaymemError(
        f"Data set {name!r} is not prepared in {where}: {how}, "
        f"or set {DATA_DIR_ENV} (or the data_dir option) to a directory that holds it."
    )


def _tfds_split(name: str, data_dir: str | None, split: str, tfds_split: str | None = None,
                **as_dataset_args: Any) -> "tf.data.Dataset":
    """Returns tfds's dataset of raymem split `split` (tfds's `tfds_split`, default the usual one) in tfds order;
    never downloads.

    Raises RaymemError when the data set is not prepared in the data directory, or has no such split.
    """
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    chosen = tfds_split or _tfds_split_name(name, split)
    splits = builder.info.splits
    if splits and chosen.split("[")[0] not in splits:
        raise RaymemError(f"Data set {name!r} has no split {chosen!r} (its splits: {', '.join(splits)}); set "
                          f"{split}_split to one of them.")
    try:
        return builder.as_dataset(split=chosen, shuffle_files=False, **as_dataset_args)
    except AssertionError as error:  # tfds's way of saying "not prepared in this directory"
        raise _missing_tfds_data(name, os.fspath(builder.data_dir_root)) from error
    except ValueError as error:  # a split name or slice tfds cannot read
        reason = str(error).strip().splitlines()[0][:200]
        raise RaymemError(f"Data set {name!r} cannot read split {chosen!r} ({reason}); set {split}_split to one "
                          "of its splits.") from None


def _tfds_num_classes(name: str, data_dir: str | None) -> int:
    """Returns the number of classes of the 'label' feature of tfds data set `name`."""
    return int(_import_tfds().builder(name, data_dir=data_dir).info.features["label"].num_classes)


def _load_tfds_arrays(name: str, data_dir: str | None, shown_as: str | None = None,
                      class_names: tuple[str, ...] = (), splits: dict[str, str] | None = None) -> ArrayDataset:
    """Returns tfds image data set ``name`` fully in memory, in tfds order, images scaled to [0, 1] (the
    ArrayDataset is called ``shown_as``, default ``name``; ``splits`` maps raymem's train/test to tfds splits)."""
    tfds = _import_tfds()
    arrays = {}
    for split in ("train", "test"):
        images, labels = [], []
        chosen = (splits or {}).get(split)
        for batch in tfds.as_numpy(_tfds_split(name, data_dir, split, chosen, batch_size=_TFDS_READ_BATCH)):
            images.append(batch["image"])
            labels.append(batch["label"])
        if not images:
            which = chosen or _tfds_split_name(name, split)
            raise RaymemError(f"Data set {shown_as or name!r}: its {which!r} split is empty; prepare the data set "
                              "again, or use another one.")
        arrays[f"x_{split}"] = _unit_scaled(np.concatenate(images))
        arrays[f"y_{split}"] = np.concatenate(labels).astype(np.int64)
    return ArrayDataset(shown_as or name, num_classes=_tfds_num_classes(name, data_dir), class_names=class_names,
                        **arrays)


def _load_tfds_builder(name: str, data_dir: str | None, splits: dict[str, str]) -> ArrayDataset:
    """``tfds:NAME[:CONFIG]``: any image-classification builder (an ``image`` and a ``label`` feature), prepared
    under the data dir, read from the tfds splits ``splits`` names for train and test; class names from its label
    feature."""
    tfds = _import_tfds()
    builder_name = name[len(TFDS_PREFIX):].replace(":", "/", 1)
    try:
        features = tfds.builder(builder_name, data_dir=data_dir).info.features
    except ValueError as error:  # DatasetNotFoundError, or a config the builder does not have
        reason = str(error).strip().splitlines()[0][:200]
        raise RaymemError(f"Data set {name!r}: TensorFlow Datasets has no builder {builder_name!r} ({reason}); "
                          "check the name with `tfds.list_builders()`.") from None
    label = features["label"] if "label" in features else None
    if "image" not in features or not hasattr(label, "num_classes"):
        raise RaymemError(f"Data set {name!r}: builder {builder_name!r} has features {', '.join(features)}, not an "
                          "image and a class label; use an image-classification builder or npz:/parquet:.")
    data = _load_tfds_arrays(builder_name, data_dir, shown_as=name, class_names=tuple(label.names), splits=splits)
    _check_classes(data.y_train, data.y_test, {"y_train": f"{name} train split", "y_test": f"{name} test split"})
    return data


def _encoded_examples(name: str, data_dir: str | None, split: str) -> "tf.data.Dataset":
    """Returns the examples of a split in tfds order as dicts whose 'image' is still encoded bytes.

    The label pass and the image pipelines all read through here, so their orders agree.
    """
    tfds = _import_tfds()
    return _tfds_split(name, data_dir, split, decoders={"image": tfds.decode.SkipDecoding()})


def _load_tfds_streaming(name: str, data_dir: str | None) -> StreamingDataset:
    """Returns a streaming tfds data set; reads its labels once (images are not decoded)."""
    y_train, y_test = _scan_streaming_labels(name, data_dir)
    return streaming_dataset(name, data_dir, y_train, y_test)


def _scan_streaming_labels(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train labels, test labels) of a streamed tfds data set in tfds order.

    This reads every record of both splits (ImageNet: ~150 GB); a run caches the result in its directory
    (``raymem.data.label_cache``) and reuses it while :func:`streaming_source` stays the same.
    """
    tfds = _import_tfds()
    labels = {}
    for split in ("train", "test"):
        label_batches = _encoded_examples(name, data_dir, split).map(lambda example: example["label"])
        batches = list(tfds.as_numpy(label_batches.batch(_LABEL_READ_BATCH)))
        labels[split] = np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64)
    return labels["train"], labels["test"]


def streaming_dataset(name: str, data_dir: str | None, y_train: np.ndarray, y_test: np.ndarray) -> StreamingDataset:
    """Returns the streamed tfds data set `name` in `data_dir` with labels already known (no scan)."""
    return StreamingDataset(
        name=name, n_train=len(y_train), n_test=len(y_test),
        num_classes=_tfds_num_classes(name, data_dir), image_size=IMAGENET_IMAGE_SIZE,
        y_train=np.asarray(y_train, dtype=np.int64), y_test=np.asarray(y_test, dtype=np.int64), data_dir=data_dir,
    )


def streaming_source(name: str, data_dir: str | None) -> dict | None:
    """Returns a cheap identity of a prepared streamed tfds data set, or None when there is none to read.

    Read from tfds's ``dataset_info.json`` (version, examples, bytes and shard lengths per split) and the
    names and sizes of the files of the prepared version: no record is read. None when the data set is not
    prepared in `data_dir` (or is mocked), so nothing can be cached against it.
    """
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    splits = {}
    for split in ("train", "test"):
        tfds_split = _tfds_split_name(name, split)
        if tfds_split not in builder.info.splits:
            return None
        info = builder.info.splits[tfds_split]
        splits[split] = {"num_examples": int(info.num_examples), "num_bytes": int(info.num_bytes),
                         "shard_lengths": [int(length) for length in info.shard_lengths]}
    files = _file_sizes(os.fspath(builder.data_dir))
    listing = hashlib.sha256(repr(files).encode()).hexdigest()
    return {"name": name, "version": str(builder.version), "num_classes": _tfds_num_classes(name, data_dir),
            "splits": splits, "files": len(files), "bytes": sum(size for _, size in files), "files_sha256": listing}


def _file_sizes(directory: str) -> list[tuple[str, int]]:
    """Returns sorted (name, size) of the files in `directory` (local or a tf.io.gfile URI); [] if it is missing."""
    if "://" in directory:
        gfile = _import_tensorflow().io.gfile
        if not gfile.isdir(directory):
            return []
        return sorted((entry, int(gfile.stat(f"{directory}/{entry}").length)) for entry in gfile.listdir(directory)
                      if not gfile.isdir(f"{directory}/{entry}"))
    try:
        return sorted((entry.name, entry.stat().st_size) for entry in os.scandir(directory) if entry.is_file())
    except OSError:
        return []


# --- local files ---------------------------------------------------------------------------------


def _unit_scaled(images: np.ndarray) -> np.ndarray:
    """Returns uint8 images as float32 in [0, 1] (value / 255)."""
    return images.astype(np.float32) / np.float32(255.0)


def _checked_inputs(x: np.ndarray, where: str) -> np.ndarray:
    """Returns inputs as float32 (uint8 scaled to [0, 1]; (N, H, W) gains a channel axis).

    `where` names the array for the error message, e.g. "array 'x_train' in /data/set.npz".
    """
    if x.dtype == np.uint8:
        x = _unit_scaled(x)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise RaymemError(f"The {where} holds NaN or infinite values; store finite numbers.")
    else:
        raise RaymemError(
            f"The {where} has dtype {x.dtype}; store images as uint8 (0-255) or inputs as floats."
        )
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim not in (2, 4) or len(x) == 0:
        raise RaymemError(
            f"The {where} has shape {x.shape}; store a non-empty (N, D), (N, H, W) or (N, H, W, C) array."
        )
    return x


def _checked_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Returns labels as int64 after checking they are n non-negative integers."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise RaymemError(f"The {where} has dtype {y.dtype} and shape {y.shape}; store a 1-D integer array.")
    if len(y) != n:
        raise RaymemError(f"The {where} holds {len(y)} labels for {n} inputs; store one label per input.")
    if len(y) and y.min() < 0:
        raise RaymemError(f"The {where} holds negative labels; number the classes 0, 1, 2, ...")
    return y.astype(np.int64)


def _array_dataset(name: str, raw: dict[str, np.ndarray], where: dict[str, str]) -> ArrayDataset:
    """Returns an ArrayDataset from raw x_train/y_train/x_test/y_test arrays after checking them;
    `where[key]` names each array for error messages."""
    arrays = {}
    for split in ("train", "test"):
        x = _checked_inputs(raw[f"x_{split}"], where[f"x_{split}"])
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = _checked_labels(raw[f"y_{split}"], len(x), where[f"y_{split}"])
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise RaymemError(
            f"The {where['x_train']} has input shape {arrays['x_train'].shape[1:]} but the "
            f"{where['x_test']} has {arrays['x_test'].shape[1:]}; store inputs of one shape."
        )
    _check_classes(arrays["y_train"], arrays["y_test"], where)
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return ArrayDataset(name, num_classes=num_classes, **arrays)


def _check_classes(y_train: np.ndarray, y_test: np.ndarray, where: dict[str, str]) -> None:
    """Refuse labels estimates cannot mean anything for: one class only, or test classes never trained on."""
    seen = np.unique(y_train)
    if len(seen) < 2:
        raise RaymemError(f"The {where['y_train']} holds only class {int(seen[0])}; a classifier needs training "
                          "examples of at least two classes.")
    unseen = np.setdiff1d(np.unique(y_test), seen)
    if len(unseen):
        shown = ", ".join(str(int(label)) for label in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
        raise RaymemError(f"The {where['y_test']} holds classes {shown} that never occur in the "
                          f"{where['y_train']}; a model cannot learn them, so their influence estimates would mean "
                          "nothing: give them training examples or drop those test examples.")


def _load_npz(name: str, path: str) -> ArrayDataset:
    """Returns the data set in an .npz file with arrays x_train, y_train, x_test, y_test."""
    raw = load_npz(path, f"the npz data set file ({NPZ_PREFIX}FILE)", _NPZ_KEYS)
    return _array_dataset(name, raw, {key: f"array {key!r} in {path}" for key in _NPZ_KEYS})


def _load_parquet(name: str, directory: str) -> ArrayDataset:
    """Returns the data set in directory/train.parquet and directory/test.parquet."""
    if not os.path.isdir(directory):
        raise RaymemError(f"The parquet data set directory {directory!r} does not exist; {_PARQUET_HELP}.")
    raw, where = {}, {}
    for split in ("train", "test"):
        path = os.path.join(directory, f"{split}.parquet")
        raw[f"x_{split}"], raw[f"y_{split}"], where[f"x_{split}"], where[f"y_{split}"] = _read_parquet_split(path)
    return _array_dataset(name, raw, where)


def _read_parquet_split(path: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Returns (inputs, labels, name of the input column, name of the label column) of one file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise RaymemError(f"{path} does not exist; {_PARQUET_HELP}.")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise RaymemError(f"{path} is not a readable parquet file ({error}); {_PARQUET_HELP}.") from error
    if "label" not in table.column_names:
        raise RaymemError(f"{path} has no 'label' column (it has {table.column_names}); {_PARQUET_HELP}.")
    label_where = f"column 'label' of {path}"
    labels = table.column("label")
    if labels.null_count or not pa.types.is_integer(labels.type):
        raise RaymemError(f"The {label_where} has type {labels.type} with {labels.null_count} nulls; "
                          f"store integer labels without nulls.")
    if "image" in table.column_names:
        input_where = f"column 'image' of {path}"
        inputs = _decode_image_column(table.column("image"), input_where)
    elif "features" in table.column_names:
        input_where = f"column 'features' of {path}"
        inputs = _feature_matrix(table.column("features"), input_where)
    else:
        raise RaymemError(f"{path} has neither an 'image' nor a 'features' column "
                          f"(it has {table.column_names}); {_PARQUET_HELP}.")
    return inputs, labels.to_numpy(), input_where, label_where


def _decode_image_column(column, where: str) -> np.ndarray:
    """Returns the encoded images of a parquet column decoded into one (N, H, W, C) uint8 array."""
    import pyarrow as pa

    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)) or column.null_count:
        raise RaymemError(f"The {where} has type {column.type} with {column.null_count} nulls; "
                          f"store PNG/JPEG bytes (binary) in every row.")
    tf = _import_tensorflow()
    images = []
    for row, encoded in enumerate(column.to_pylist()):
        try:
            image = tf.io.decode_image(encoded, expand_animations=False).numpy()
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise RaymemError(f"Row {row} of the {where} is not a PNG/JPEG image; "
                              f"store encoded image bytes.") from error
        if images and image.shape != images[0].shape:
            raise RaymemError(f"Row {row} of the {where} is {image.shape} but row 0 is {images[0].shape}; "
                              f"resize all images to one size.")
        images.append(image)
    return np.stack(images) if images else np.zeros((0, 0), np.uint8)


def _feature_matrix(column, where: str) -> np.ndarray:
    """Returns a parquet column of equal-length float lists as an (N, D) array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks()
    is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type) \
        or pa.types.is_fixed_size_list(column.type)
    if not is_list or column.null_count or not pa.types.is_floating(column.type.value_type):
        raise RaymemError(f"The {where} has type {column.type} with {column.null_count} nulls; "
                          f"store a list of floats in every row.")
    lengths = np.unique(pc.list_value_length(column).to_numpy())
    if len(lengths) > 1:
        raise RaymemError(f"The {where} holds lists of lengths {lengths.tolist()}; store lists of one length.")
    values = pc.list_flatten(column)
    if values.null_count:
        raise RaymemError(f"The {where} holds null values inside its lists; store numbers only.")
    width = int(lengths[0]) if len(lengths) else 0
    return values.to_numpy(zero_copy_only=False).reshape(len(column), width)


# --- image folders -------------------------------------------------------------------------------

_IMAGEFOLDER_HELP = (
    "an imagefolder: data set is a folder holding train/<class>/<image> and test/<class>/<image> "
    f"({', '.join(IMAGE_SUFFIXES)} files; class names are the folder names, sorted)"
)


def _load_imagefolder(name: str, directory: str, image_size: int | None) -> ArrayDataset:
    """Returns the images of DIR/train/<class>/* and DIR/test/<class>/*, labels numbered by sorted class name.

    Images are decoded in sorted file order (index i of a split is always the same file), resized to
    `image_size` x `image_size` when it is given, and must otherwise share one size.
    """
    if not os.path.isdir(directory):
        raise RaymemError(f"The image folder {directory!r} does not exist; {_IMAGEFOLDER_HELP}.")
    train_dir, test_dir = os.path.join(directory, "train"), os.path.join(directory, "test")
    classes = _class_folders(train_dir)
    if len(classes) < 2:
        raise RaymemError(f"{train_dir} has {len(classes)} class folder{'s' if not classes else ''} "
                          f"({', '.join(classes) or 'none'}); a classifier needs at least two, one folder per class.")
    unknown = sorted(set(_class_folders(test_dir)) - set(classes))
    if unknown:
        raise RaymemError(f"The test classes {', '.join(unknown[:5])} of {test_dir} have no folder in {train_dir}; "
                          "a model cannot learn them: give them training images or remove those test folders.")
    raw, where, first = {}, {}, None
    for split, folder in (("train", train_dir), ("test", test_dir)):
        files, labels = _image_files(folder, classes, require_each=split == "train")
        images, first = _decode_files(files, image_size, first)
        raw[f"x_{split}"], raw[f"y_{split}"] = images, np.asarray(labels, dtype=np.int64)
        where[f"x_{split}"], where[f"y_{split}"] = f"images in {folder}", f"labels of {folder}"
    data = _array_dataset(name, raw, where)
    return ArrayDataset(name, data.x_train, data.y_train, data.x_test, data.y_test, num_classes=len(classes),
                        class_names=tuple(classes))


def _class_folders(split_dir: str) -> list[str]:
    """The sorted class folder names of one split folder (hidden entries skipped)."""
    if not os.path.isdir(split_dir):
        raise RaymemError(f"{split_dir} does not exist; {_IMAGEFOLDER_HELP}.")
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def _image_files(split_dir: str, classes: list[str], require_each: bool) -> tuple[list[str], list[int]]:
    """(image paths, labels) of a split, in class order then sorted file names."""
    files, labels = [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(split_dir, cls)
        names = sorted(n for n in os.listdir(folder) if not n.startswith(".")) if os.path.isdir(folder) else []
        for entry in names:
            path = os.path.join(folder, entry)
            if not entry.lower().endswith(IMAGE_SUFFIXES) or not os.path.isfile(path):
                raise RaymemError(f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)}); move it out of "
                                  f"{split_dir}.")
        if require_each and not names:
            raise RaymemError(f"The class folder {folder} holds no images; add training images or remove it.")
        files.extend(os.path.join(folder, entry) for entry in names)
        labels.extend([label] * len(names))
    if not files:
        raise RaymemError(f"{split_dir} holds no images; {_IMAGEFOLDER_HELP}.")
    return files, labels


def _decode_files(files: list[str], image_size: int | None, first: tuple | None) -> tuple[np.ndarray, tuple]:
    """The files decoded into one (N, H, W, C) uint8 array; `first` is (path, shape) of the set's first image,
    which every image must match when no `image_size` resizes them."""
    tf = _import_tensorflow()
    images = []
    for path in files:
        try:
            with open(path, "rb") as handle:
                image = tf.io.decode_image(handle.read(), expand_animations=False)
        except (OSError, tf.errors.InvalidArgumentError, ValueError) as error:
            reason = " ".join(str(error).split("}}")[-1].split())[:120]  # without TensorFlow's op prefix
            raise RaymemError(f"{path} is not a readable PNG/JPEG image ({reason}); replace or remove it.") from None
        if image_size:
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, (image_size, image_size),
                                                                      antialias=True)), 0, 255), tf.uint8)
        image = image.numpy()
        if first is None:
            first = (path, image.shape)
        elif image.shape != first[1]:
            fix = "set image_size to resize every image to one size" if image.shape[2] == first[1][2] else \
                "convert the files to one color mode (all RGB or all grayscale)"
            raise RaymemError(f"{path} is {image.shape[1]}x{image.shape[0]} with {image.shape[2]} channels but "
                              f"{first[0]} is {first[1][1]}x{first[1][0]} with {first[1][2]}; {fix}.")
        images.append(image)
    return np.stack(images), first
