"""K copies of one Keras architecture as one vectorised model (the model half of ``--pack``; see ``packing``).

The trial's Keras model (``models.build_model``, the one place each architecture is defined) is built
once per copy with that copy's trial seed, and its functional graph is then replayed layer by layer over
stacked weights. Nothing mixes copies: every operation is per copy, per channel group of one copy, or
per channel of one copy.

Tensor layouts on the way through (``_Value.layout``):

- ``IMAGE``: channel-packed ``(batch, H, W, K * C)``, copy k's channels at ``[k*C, (k+1)*C)``. Row i of
  the batch holds *copy k's own* i-th example in copy k's channels, so any per-channel statistic over
  the batch (batch normalization's mean and variance) is a statistic of that copy's own batch only.
  Convolutions run as one *grouped* convolution (group k = copy k).
- ``VECTOR``: ``(K, batch, F)``; dense layers are one batched product ``(K, b, in) @ (K, in, out)``.
- ``SHARED_IMAGE`` / ``SHARED_VECTOR``: one input every copy sees (predictions): ``(batch, H, W, C)`` /
  ``(batch, F)``. The first convolution (or dense layer) reads it once with all copies' filters; any
  other layer first tiles it to the per-copy layout.

Layers it replays: InputLayer, Conv2D, Dense, BatchNormalization, MaxPooling2D, AveragePooling2D,
GlobalAveragePooling2D, Flatten, Concatenate, Add, ReLU, Activation, Identity: every model of the
catalog. Anything else is refused when the pack is built, with the layer named.

TensorFlow is imported lazily, as in ``training``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from raymem.errors import RaymemError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE, VECTOR, SHARED_IMAGE, SHARED_VECTOR = "image", "vector", "shared image", "shared vector"
#: Layers without weights that act on any layout elementwise.
_ELEMENTWISE = ("ReLU", "Activation", "Identity")
_POOLS = ("MaxPooling2D", "AveragePooling2D")
_KNOWN = ("InputLayer", "Conv2D", "Dense", "BatchNormalization", "GlobalAveragePooling2D", "Flatten",
          "Concatenate", "Add", *_POOLS, *_ELEMENTWISE)


@dataclass
class _Value:
    """A tensor of the packed forward pass and its layout (one of the four above)."""

    tensor: object
    layout: str


@dataclass
class _Node:
    """One layer of the template: its kind, the Keras layer, its stacked variables, where it reads and writes."""

    kind: str
    layer: object
    params: dict
    inputs: list[int]
    output: int


class PackedModel:
    """K copies of one Keras functional model with stacked weights (see the module docstring).

    Args:
        template: the Keras model (any copy: only its graph and layer settings are read).
        per_copy_weights: copy k's ``get_weights()`` list, one per copy.
    """

    def __init__(self, template, per_copy_weights: list[list[np.ndarray]]):
        self.k = len(per_copy_weights)
        self.name = template.name
        self.input_rank = len(template.inputs[0].shape) - 1
        self._input = id(template.inputs[0])
        self._output = id(template.outputs[0])
        self.nodes: list[_Node] = []
        self.variables: list = []  # trained by the optimizer
        self.state: list = []      # batch normalization's moving statistics
        offset = 0
        for layer in template.layers:
            n_weights = len(layer.get_weights())
            stacked = [np.stack([w[offset + j] for w in per_copy_weights]) for j in range(n_weights)]
            offset += n_weights
            node = self._node(layer, stacked)
            if node is not None:
                self.nodes.append(node)

    def _node(self, layer, stacked: list[np.ndarray]) -> _Node | None:
        """The replay of ``layer`` with its copies' weights ``stacked`` (each ``(K, ...)``); None for the input."""
        import tensorflow as tf

        kind = type(layer).__name__
        if kind not in _KNOWN:
            raise RaymemError(f"layer {layer.name} ({kind}) of model {self.name} cannot be packed; "
                              f"use pack=1.")
        if kind == "InputLayer":
            return None
        _check_layer(layer, kind, self.name, bool(stacked))
        params: dict = {}
        if kind == "Conv2D":
            kernel = stacked[0]  # (K, kh, kw, cin, cout) -> (kh, kw, cin, K * cout), copy-major output channels
            _, kh, kw, cin, cout = kernel.shape
            params["kernel"] = tf.Variable(np.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, cin, self.k * cout))
            if layer.use_bias:
                params["bias"] = tf.Variable(stacked[1].reshape(self.k * cout))
        elif kind == "Dense":
            params["kernel"] = tf.Variable(stacked[0])                 # (K, in, out)
            if layer.use_bias:
                params["bias"] = tf.Variable(stacked[1][:, None, :])   # (K, 1, out)
        elif kind == "BatchNormalization":
            names = [n for n, on in (("gamma", layer.scale), ("beta", layer.center)) if on]
            for name, value in zip(names + ["moving_mean", "moving_variance"], stacked, strict=True):
                params[name] = tf.Variable(value.reshape(-1), trainable=name in ("gamma", "beta"))  # (K * C)
        self.variables.extend(v for v in params.values() if v.trainable)
        self.state.extend(v for v in params.values() if not v.trainable)
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        return _Node(kind, layer, params, [id(t) for t in inputs], id(layer.output))

    # ---- forward passes

    def _forward(self, x, shared: bool, training: bool = False):
        """Logits ``(K, batch, classes)``. ``x``: ``(K, batch, ...)`` per-copy inputs, or, with ``shared``,
        ``(batch, ...)`` inputs every copy sees. ``training``: batch statistics (and their moving averages
        updated) instead of the moving averages."""
        import tensorflow as tf

        if shared:
            value = _Value(x, SHARED_IMAGE if self.input_rank == 3 else SHARED_VECTOR)
        elif self.input_rank == 3:   # (K, b, H, W, C) -> channel-packed (b, H, W, K*C)
            _, b, h, w, c = x.shape[0], tf.shape(x)[1], x.shape[2], x.shape[3], x.shape[4]
            value = _Value(tf.reshape(tf.transpose(x, (1, 2, 3, 0, 4)), (b, h, w, self.k * c)), IMAGE)
        else:
            value = _Value(x, VECTOR)
        values = {self._input: value}
        for node in self.nodes:
            values[node.output] = self._apply(node, [values[i] for i in node.inputs], training)
        out = values[self._output]
        if out.layout != VECTOR:   # a model without weights: not one of ours
            raise RaymemError(f"model {self.name} has no layer with weights to pack.")
        return out.tensor

    def _apply(self, node: _Node, args: list[_Value], training: bool) -> _Value:
        """One layer on its inputs."""
        import tensorflow as tf

        kind, layer, params = node.kind, node.layer, node.params
        x = args[0]
        if kind == "Conv2D":
            # per-copy input: K*cin channels, kernel cin -> TensorFlow runs K groups (group k = copy k);
            # shared input: cin channels -> one ordinary convolution with all copies' filters
            if x.layout not in (IMAGE, SHARED_IMAGE):
                raise RaymemError(f"layer {layer.name} of model {self.name} reads a vector; it cannot be packed.")
            y = tf.nn.conv2d(x.tensor, params["kernel"], strides=layer.strides, padding=layer.padding.upper())
            if "bias" in params:
                y = tf.nn.bias_add(y, params["bias"])
            return _Value(layer.activation(y), IMAGE)
        if kind == "Dense":
            if x.layout in (IMAGE, SHARED_IMAGE):
                raise RaymemError(f"layer {layer.name} of model {self.name} is a dense layer on an image; "
                                  "it cannot be packed; use pack=1.")
            if x.layout == SHARED_VECTOR:
                y = tf.einsum("bi,kio->kbo", x.tensor, params["kernel"])
            else:
                y = tf.matmul(self._per_copy(x).tensor, params["kernel"])
            if "bias" in params:
                y = y + params["bias"]
            return _Value(layer.activation(y), VECTOR)
        if kind == "BatchNormalization":
            return _Value(self._batch_norm(self._per_copy(x).tensor, layer, params, training), IMAGE)
        if kind in _ELEMENTWISE:
            return _Value(x.tensor if kind == "Identity" else layer(x.tensor), x.layout)
        if kind in _POOLS:
            pool = tf.nn.max_pool2d if kind == "MaxPooling2D" else tf.nn.avg_pool2d
            return _Value(pool(x.tensor, layer.pool_size, layer.strides, layer.padding.upper()), x.layout)
        if kind == "GlobalAveragePooling2D":
            y = tf.reduce_mean(x.tensor, axis=(1, 2))                      # (b, C) or (b, K*C)
            if x.layout == SHARED_IMAGE:
                return _Value(y, SHARED_VECTOR)
            return _Value(tf.transpose(tf.reshape(y, (tf.shape(y)[0], self.k, -1)), (1, 0, 2)), VECTOR)
        if kind == "Flatten":
            if x.layout in (VECTOR, SHARED_VECTOR):
                return x
            if x.layout == SHARED_IMAGE:
                return _Value(tf.reshape(x.tensor, (tf.shape(x.tensor)[0], -1)), SHARED_VECTOR)
            b, h, w, kc = tf.shape(x.tensor)[0], x.tensor.shape[1], x.tensor.shape[2], x.tensor.shape[3]
            y = tf.transpose(tf.reshape(x.tensor, (b, h, w, self.k, kc // self.k)), (3, 0, 1, 2, 4))
            return _Value(tf.reshape(y, (self.k, b, -1)), VECTOR)
        if kind == "Add":
            if len({a.layout for a in args}) == 1:
                return _Value(tf.add_n([a.tensor for a in args]), x.layout)
            return _Value(tf.add_n([self._per_copy(a).tensor for a in args]), self._per_copy(x).layout)
        return self._concatenate(args)  # the only kind left (_KNOWN)

    def _per_copy(self, x: _Value) -> _Value:
        """``x`` in a per-copy layout: a shared input tiled to every copy."""
        import tensorflow as tf

        if x.layout == SHARED_IMAGE:   # copy-major channels: the C channels repeated K times
            return _Value(tf.tile(x.tensor, (1, 1, 1, self.k)), IMAGE)
        if x.layout == SHARED_VECTOR:
            return _Value(tf.broadcast_to(x.tensor[None], tf.concat([[self.k], tf.shape(x.tensor)], 0)), VECTOR)
        return x

    def _concatenate(self, args: list[_Value]) -> _Value:
        """Channels of every input, copy by copy: copy k's block is its blocks of the inputs, in order."""
        import tensorflow as tf

        if all(a.layout == SHARED_IMAGE for a in args):
            return _Value(tf.concat([a.tensor for a in args], axis=-1), SHARED_IMAGE)
        parts = [self._per_copy(a) for a in args]
        if parts[0].layout == VECTOR:
            return _Value(tf.concat([p.tensor for p in parts], axis=-1), VECTOR)
        h, w = parts[0].tensor.shape[1], parts[0].tensor.shape[2]   # static: the models have fixed input sizes
        split = [tf.reshape(p.tensor, (-1, h, w, self.k, p.tensor.shape[-1] // self.k)) for p in parts]
        channels = sum(p.tensor.shape[-1] for p in parts)
        return _Value(tf.reshape(tf.concat(split, axis=-1), (-1, h, w, channels)), IMAGE)

    def _batch_norm(self, x, layer, params: dict, training: bool):
        """Keras's BatchNormalization per channel of ``x`` (channel-packed): training uses the batch's own
        per-channel moments, which are per copy (see the module docstring), and moves the averages."""
        import tensorflow as tf

        if training:
            mean, variance = tf.nn.moments(x, axes=(0, 1, 2))
            m = layer.momentum
            params["moving_mean"].assign(params["moving_mean"] * m + tf.stop_gradient(mean) * (1.0 - m))
            params["moving_variance"].assign(params["moving_variance"] * m + tf.stop_gradient(variance) * (1.0 - m))
        else:
            mean, variance = params["moving_mean"], params["moving_variance"]
        return tf.nn.batch_normalization(x, mean, variance, params.get("beta"), params.get("gamma"), layer.epsilon)

    def logits(self, x_per_copy, training: bool = False):
        """Logits ``(K, batch, classes)`` of per-copy inputs ``(K, batch, ...)``."""
        return self._forward(x_per_copy, shared=False, training=training)

    def predict_labels(self, x: np.ndarray, chunk: int) -> np.ndarray:
        """Predicted class (int32) of every copy on every input, ``chunk`` inputs at a time: ``(K, len(x))``."""
        import tensorflow as tf

        forward = tf.function(lambda batch: tf.argmax(self._forward(batch, shared=True), axis=-1, output_type=tf.int32),
                              reduce_retracing=True)
        out = [forward(tf.constant(x[i:i + chunk])).numpy() for i in range(0, len(x), chunk)]
        return np.concatenate(out, axis=1) if out else np.zeros((self.k, 0), np.int32)

    # ---- weights

    def copy_weights(self, k: int) -> list[np.ndarray]:
        """Copy ``k``'s weights in the order of its Keras model's ``get_weights()``."""
        out = []
        for node in self.nodes:
            params = node.params
            if node.kind == "Conv2D":
                kh, kw, cin, kcout = params["kernel"].shape
                out.append(params["kernel"].numpy().reshape(kh, kw, cin, self.k, kcout // self.k)[:, :, :, k, :])
                if "bias" in params:
                    out.append(params["bias"].numpy().reshape(self.k, -1)[k])
            elif node.kind == "Dense":
                out.append(params["kernel"].numpy()[k])
                if "bias" in params:
                    out.append(params["bias"].numpy()[k, 0])
            elif node.kind == "BatchNormalization":
                out.extend(v.numpy().reshape(self.k, -1)[k] for v in params.values())
        return out


def _check_layer(layer, kind: str, model: str, has_weights: bool) -> None:
    """Refuse settings of a known layer kind that the replay does not implement."""
    refuse = None
    if kind == "Conv2D" and (layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1)
                             or layer.data_format != "channels_last"):
        refuse = "a grouped, dilated or channels-first convolution"
    elif kind == "BatchNormalization" and (layer.axis not in (-1, 3) or len(layer.input.shape) != 4
                                           or getattr(layer, "renorm", False)):
        refuse = "batch normalization other than per channel of an image"
    elif kind == "Concatenate" and layer.axis not in (-1, len(layer.input[0].shape) - 1):
        refuse = "a concatenation along another axis than the channels"
    elif kind in (*_POOLS, "GlobalAveragePooling2D") and (layer.data_format != "channels_last"
                                                         or getattr(layer, "keepdims", False)):
        refuse = "a channels-first or keepdims pooling"
    elif kind not in ("Conv2D", "Dense", "BatchNormalization") and has_weights:
        refuse = "weights packing does not know"
    if refuse:
        raise RaymemError(f"layer {layer.name} of model {model} is {refuse}, which cannot be packed; use pack=1.")
