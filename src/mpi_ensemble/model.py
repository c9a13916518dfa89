"""The paper's CNN and its arithmetic cost."""

CONV_FILTERS = (32, 64, 64)
DENSE_UNITS = 64
KERNEL = 3
IMAGE_SHAPE = (28, 28, 1)
CLASSES = 10
# Raise whenever build_model's layers, initialisers or compile settings change: a checkpoint saved by another
# version of the model is then discarded instead of resumed.
MODEL_VERSION = 2
# Adam's default, which the paper's "adam" takes, for an update that averages the gradient of batch_size images.
BASE_LEARNING_RATE = 0.001
# The learning-rate rule of every method, by the images one optimizer update averages against batch_size: none
# (the paper's), linear (Goyal et al. 2017) or square root (Krizhevsky 2014; Hoffer et al. 2017).
SCALINGS = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": lambda ratio: ratio ** 0.5}


def learning_rate(scaling, images_per_update, batch_size):
    """The one learning-rate rule: BASE_LEARNING_RATE for updates of batch_size images, scaled by `scaling` for
    updates that average more (synchronous SGD at 64 images per rank: 64·N)."""
    if scaling not in SCALINGS:
        raise ValueError(f"learning_rate_scaling must be one of {', '.join(SCALINGS)}, not {scaling!r}")
    return BASE_LEARNING_RATE * SCALINGS[scaling](images_per_update / batch_size)


def build_model(keras, input_shape=IMAGE_SHAPE, classes=CLASSES, steps_per_execution=1, optimizer="adam",
                output_dtype="float32", learning_rate=BASE_LEARNING_RATE):
    """Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense10: 3x3 valid convs, ReLU, softmax (93,322 params).

    The output layer computes in float32 whatever the precision policy: under mixed_bfloat16 a bfloat16 softmax
    (8 bits of mantissa) would feed the loss and the saved probabilities that the soft and tie-break votes use,
    as Keras' mixed-precision guide warns. (`output_dtype=None` follows the policy: benchmarks/bf16_output.py.)"""
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(CONV_FILTERS[0], KERNEL, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(CONV_FILTERS[1], KERNEL, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(CONV_FILTERS[2], KERNEL, activation="relu"),
            layers.Flatten(),
            layers.Dense(DENSE_UNITS, activation="relu"),
            layers.Dense(classes, activation="softmax", dtype=output_dtype),
        ]
    )
    # Integer labels with the sparse loss equal one-hot labels with categorical cross-entropy, without the copy.
    # steps_per_execution > 1 runs that many train steps per call into the compiled graph: same batches, same
    # updates, fewer Python round trips.
    if optimizer == "adam":  # the paper's, at the learning rate of the one rule (Adam's default for batch_size)
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    return model


def layer_shapes(input_shape=IMAGE_SHAPE):
    """(kind, input HxWxC, output HxWxC) for each weighted layer, from the architecture alone."""
    h, w, c = input_shape
    shapes = []
    for i, filters in enumerate(CONV_FILTERS):
        out_h, out_w = h - KERNEL + 1, w - KERNEL + 1
        shapes.append(("conv", (h, w, c), (out_h, out_w, filters)))
        h, w, c = out_h, out_w, filters
        if i < len(CONV_FILTERS) - 1:
            h, w = h // 2, w // 2
    shapes.append(("dense", (h * w * c,), (DENSE_UNITS,)))
    shapes.append(("dense", (DENSE_UNITS,), (CLASSES,)))
    return shapes


def parameter_count(input_shape=IMAGE_SHAPE):
    total = 0
    for kind, inp, out in layer_shapes(input_shape):
        fan_in = KERNEL * KERNEL * inp[2] if kind == "conv" else inp[0]
        total += (fan_in + 1) * out[-1]
    return total


def layer_flops(input_shape=IMAGE_SHAPE):
    """Multiply-adds x2 of each weighted layer's forward pass for one image (pooling and activations are
    negligible)."""
    flops = []
    for kind, inp, out in layer_shapes(input_shape):
        if kind == "conv":
            flops.append(2 * KERNEL * KERNEL * inp[2] * out[0] * out[1] * out[2])
        else:
            flops.append(2 * inp[0] * out[0])
    return flops


def forward_flops(input_shape=IMAGE_SHAPE):
    return sum(layer_flops(input_shape))


def training_flops_per_image(input_shape=IMAGE_SHAPE):
    """What one training step computes per image: the forward pass, the weight gradient of every weighted layer
    (as costly as its forward pass), and the input gradient of every weighted layer but the first, whose input is
    the image itself and needs none."""
    flops = layer_flops(input_shape)
    return sum(flops) + sum(flops) + sum(flops[1:])


def fit_flops(train_images, validation_images):
    """What one epoch of `fit` computes: a training step per training image, a forward pass per validation image.
    The fit time that GFLOP/s divide by holds both, so both are counted (docs/performance.md)."""
    return train_images * training_flops_per_image() + validation_images * forward_flops()


def gflops(train_images, validation_images, epochs, seconds):
    """GFLOP/s of `epochs` epochs of `fit` on these images in `seconds`: the one formula of summary.csv and the
    benchmarks."""
    return fit_flops(train_images, validation_images) * epochs / seconds / 1e9
