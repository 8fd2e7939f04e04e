"""Training FLOPs of one model, counted from its Keras graph (``train_flops_per_model`` of ``raymem run --dry-run``).

A forward pass costs, per example, 2 FLOPs (a multiply and an add) per weight of every convolution and dense
layer at every output position it is applied to: ``2 x k_h x k_w x (c_in / groups) x c_out x H_out x W_out`` for a
Conv2D, ``2 x k_h x k_w x c_in x multiplier x H_out x W_out`` for a DepthwiseConv2D, ``2 x in x out`` for a Dense.
Biases, batch normalization, activations, pooling and additions are left out: together a few percent of a
convolutional network's work, and the convention of the published counts this is compared with (airbench, FFCV).

Training costs 3 forward passes per example seen (the forward pass, and the backward pass's two products: one
for the gradient of the activations, one for that of the weights): ``3 x forward x m x epochs`` for a trial that
trains on a subset of m examples, plus one forward pass per example the trial predicts on afterwards (every
training and every test example, as a trial does).

A dry run builds no data set: the sizes and shapes of the named data sets are written here, and those of an
``npz:`` file are read from its array headers without loading it.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from raymem.config.experiment import ExperimentConfig
from raymem.data.datasets import NPZ_PREFIX

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Named data set -> (input shape, classes, training examples, test examples), as the loaders return them.
DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int, int, int]] = {
    "digits": ((8, 8, 1), 10, 1257, 540),
    "mnist": ((28, 28, 1), 10, 60000, 10000),
    "cifar10": ((32, 32, 3), 10, 50000, 10000),
    "cifar100": ((32, 32, 3), 100, 50000, 10000),
    "imagenet2012": ((224, 224, 3), 1000, 1281167, 50000),
}
#: Layers whose kernels do the counted work (by class name, so the same table serves Keras 3 and tf-keras).
_KERNEL_LAYERS = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "Dense")


def _positions(shape) -> int:
    """Output positions a channels-last layer applies its kernel at: the product of the dims between batch and
    channels (1 for a Dense on vectors)."""
    return int(np.prod([int(size) for size in tuple(shape)[1:-1]], dtype=np.int64)) if len(shape) > 2 else 1


def _output_shapes(layer) -> list:
    """The output shape of each call of ``layer`` in the graph (a layer shared by several calls counts each)."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    shapes = []
    for node in nodes:
        outputs = getattr(node, "output_tensors", None)
        if outputs is None:  # tf-keras nodes
            outputs = node.outputs if isinstance(node.outputs, (list, tuple)) else [node.outputs]
        shapes.extend(tensor.shape for tensor in outputs[:1])
    return shapes or [layer.output.shape]


def layer_forward_flops(layer) -> int:
    """Forward FLOPs per example of one layer (0 for the layers not counted); a nested model is walked."""
    if hasattr(layer, "layers") and layer.layers:
        return forward_flops(layer)
    name = type(layer).__name__
    if name == "SeparableConv2D":
        weights = int(np.prod(layer.depthwise_kernel.shape)) + int(np.prod(layer.pointwise_kernel.shape))
    elif name in _KERNEL_LAYERS:
        kernel = getattr(layer, "depthwise_kernel", None) or layer.kernel  # tf-keras names a depthwise kernel so
        weights = int(np.prod(kernel.shape))  # a grouped conv's kernel holds c_in / groups input channels
    else:
        return 0
    return sum(2 * weights * _positions(shape) for shape in _output_shapes(layer))


def forward_flops(model) -> int:
    """Forward FLOPs of ``model`` per example: the sum over its convolution and dense layers."""
    return sum(layer_forward_flops(layer) for layer in model.layers)


def train_flops(forward: int, subset_size: int, epochs: int, n_eval: int, eval_passes: int = 1) -> int:
    """FLOPs of one trial: 3 x ``forward`` per training example seen, plus ``eval_passes`` forward passes over
    ``n_eval`` predicted examples (more than one with test-time augmentation)."""
    return 3 * forward * subset_size * epochs + forward * n_eval * eval_passes


def dataset_shape(dataset: str) -> tuple[tuple[int, ...], int, int, int] | None:
    """(input shape, classes, n_train, n_test) of a data set, without loading it; None when unknown (an ``npz:``
    file not written yet, a ``parquet:`` directory)."""
    if dataset in DATASET_SHAPES:
        return DATASET_SHAPES[dataset]
    if dataset.startswith(NPZ_PREFIX):
        return _npz_shape(dataset.removeprefix(NPZ_PREFIX))
    return None


def _npz_shape(path: str) -> tuple[tuple[int, ...], int, int, int] | None:
    """Shapes from the .npy headers inside an npz (its arrays are not read); classes from its labels."""
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for key in ("x_train", "x_test"):
                with archive.open(f"{key}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shapes[key] = read(member)[0]
            with np.load(path, allow_pickle=False) as arrays:  # the labels only: small next to the inputs
                classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return tuple(shapes["x_train"][1:]), classes, int(shapes["x_train"][0]), int(shapes["x_test"][0])


def _features_shape(config: ExperimentConfig):
    """A ``DATASET-features.npz`` not written yet is planned as ``raymem features DATASET`` writes it: the
    penultimate layer of its default model (resnet50) on that data set."""
    stem = os.path.basename(config.dataset.removeprefix(NPZ_PREFIX)).removesuffix(".npz")
    source = stem.removesuffix("-features")
    if not config.dataset.startswith(NPZ_PREFIX) or source == stem or source not in DATASET_SHAPES:
        return None
    from raymem.training.models import build_model, feature_extractor

    shape, classes, n_train, n_test = DATASET_SHAPES[source]
    width = int(feature_extractor(build_model("resnet50", shape, classes)).output.shape[-1])
    return (width,), classes, n_train, n_test


def format_flops(value: float) -> str:
    """``43.8 PFLOPs``, ``216 GFLOPs``: a FLOP count with its SI prefix."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOPs"
    return f"{value:.3g} FLOPs"


def plan_flops(config: ExperimentConfig) -> dict:
    """``{"train_flops_per_model", "forward_flops_per_example", "flops_basis"}`` of ``config`` (the counts None when
    the data set's shape is unknown before it is read)."""
    shape = dataset_shape(config.dataset)
    basis = ""
    if shape is None:
        shape = _features_shape(config)
        basis = " (the data set as `raymem features` would write it: resnet50 penultimate features)"
    if shape is None:
        return {"train_flops_per_model": None, "forward_flops_per_example": None,
                "flops_basis": f"shape of {config.dataset} unknown until it exists"}
    from raymem.training.keras_backend import keras
    from raymem.training.models import build_model

    input_shape, classes, n_train, n_test = shape
    forward = forward_flops(build_model(config.model, input_shape, classes))
    keras.backend.clear_session()
    m = config.subset_size(n_train)
    total = train_flops(forward, m, config.recipe.epochs, n_train + n_test)
    return {
        "train_flops_per_model": total,
        "forward_flops_per_example": forward,
        "flops_basis": f"3 x {forward:,} forward FLOPs x {m:,} examples x {config.recipe.epochs} epochs + "
                       f"{n_train + n_test:,} predictions, {config.dataset} {'x'.join(map(str, input_shape))}"
                       + basis,
    }
