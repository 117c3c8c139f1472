"""The experiment spec: pydantic models, TOML loading, `--set` overrides, JSON Schema.

This is the ground floor of the package: it imports no TensorFlow, so `runner validate` and
`runner schema` answer in a fraction of a second.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

Policy = Literal["float32", "mixed_float16", "mixed_bfloat16"]
# "auto": the fastest policy measured on the spec's model here whose preflight passes (choices.py).
PolicySetting = Literal["float32", "mixed_float16", "mixed_bfloat16", "auto"]
Activation = Literal["relu", "gelu", "swish", "tanh"]
# What one layer may compute in under [precision.layers] (float16 or bfloat16 alone would give it
# low-precision variables: the mixed policies keep them in float32).
LayerPolicy = Literal["float32", "mixed_float16", "mixed_bfloat16"]
LayerPattern = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s]+$")]
SourceName = Literal["cifar10", "cifar100", "mnist", "fashion_mnist", "shapes", "npz", "image_folder", "tfds"]
PositiveInt = Annotated[int, Field(gt=0)]
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
APPLICATION_PATTERN = r"^[A-Z][A-Za-z0-9_]*$"
# A TFDS dataset: name[/config][:version], without a namespace ("huggingface:…" would fetch code and data).
TFDS_NAME_PATTERN = r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9*]+\.[0-9*]+\.[0-9*]+)?$"
TfdsSplit = Annotated[str, Field(min_length=1, max_length=200)]  # "train", "train[:90%]", "train+test"
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def _int_or_auto(value: Any) -> Any:
    if value == "auto" or (type(value) is int and value > 0):
        return value
    raise PydanticCustomError("int_or_auto", 'a positive integer or "auto"')


IntOrAuto = Annotated[int | Literal["auto"], BeforeValidator(_int_or_auto)]


def _bool_or_auto(value: Any) -> Any:
    if value == "auto" or type(value) is bool:
        return value
    raise PydanticCustomError("bool_or_auto", 'true, false or "auto"')


BoolOrAuto = Annotated[bool | Literal["auto"], BeforeValidator(_bool_or_auto)]


class BadInput(Exception):
    """Input the user must fix (spec, data, model source): one readable message, exit code 2."""


class SpecError(BadInput):
    """A spec that cannot be loaded: one readable message (file, field, expected, received)."""


class SpecValueError(BadInput):
    """A spec value only a run can judge (it needs the data, TensorFlow or the user's code): the
    message starts with the field path; the caller, who knows the file, puts its name first."""


class StrictModel(BaseModel):
    # strict: TOML is typed, so "32" for an int is a mistake, not something to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


COMPUTE_DTYPE: dict[str, str] = {
    "float32": "float32",
    "mixed_float16": "float16",
    "mixed_bfloat16": "bfloat16",
}
DEFAULT_INITIAL_SCALE = 2.0**15  # Keras' LossScaleOptimizer's own default
# What `model.output = "probabilities"` ends in: a float16 one loses them (the tutorial's third bug).
PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")


class PrecisionSpec(StrictModel):
    """The dtype policy and what it implies (as Keras' DTypePolicy owns its dtypes; COMPUTE_DTYPE above)."""

    policy: PolicySetting = "mixed_float16"
    # Loss scaling only exists under mixed_float16; float32 and bfloat16 ignore it.
    loss_scale: Literal["dynamic", "none"] = "dynamic"
    initial_scale: Annotated[float, Field(gt=0)] = DEFAULT_INITIAL_SCALE
    growth_interval: PositiveInt = 2000
    # "policy" reproduces the float16-softmax bug on purpose; the checks then flag it.
    output_dtype: Literal["float32", "policy"] = "float32"
    # Per-layer policies: a layer-path pattern → the policy that layer computes in, e.g.
    # {"*softmax*" = "float32", "block_0_attention*" = "float32"}. A path is the layer's name under
    # its parents' ("block_0_attention/softmax"; `runner check` lists them); `*` matches any
    # characters, "/" too (fnmatch). The first pattern that matches a layer wins; a pattern that
    # matches no layer is an error. Applied when the model is built (Keras 3); the audit takes these
    # layers' dtypes as intended. `runner check --fix` proposes one.
    layers: dict[LayerPattern, LayerPolicy] = Field(default_factory=dict, max_length=64)

    @property
    def uses_loss_scaling(self) -> bool:
        """Loss scaling exists only for float16, whose narrow exponent range underflows small gradients."""
        return self.policy == "mixed_float16" and self.loss_scale == "dynamic"


class SeedCnn(StrictModel):
    """The tutorial's network: Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense10."""

    kind: Literal["seed_cnn"] = "seed_cnn"
    filters: Annotated[list[PositiveInt], Field(min_length=1, max_length=6)] = [32, 64, 64]
    kernel_size: Annotated[int, Field(ge=1, le=7)] = 3
    dense_units: PositiveInt = 64
    activation: Activation = "relu"
    pooling: Literal["max", "average"] = "max"
    batch_norm: bool = False
    dropout: Fraction = 0.0


class Mlp(StrictModel):
    kind: Literal["mlp"] = "mlp"
    hidden_units: Annotated[list[PositiveInt], Field(min_length=1, max_length=8)] = [256, 128]
    activation: Activation = "relu"
    batch_norm: bool = False
    dropout: Fraction = 0.0


class ResNet(StrictModel):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): depth = 6n + 2, widths w, 2w, 4w."""

    kind: Literal["resnet"] = "resnet"
    depth: Annotated[int, Field(ge=8, le=110)] = 20
    width: PositiveInt = 16
    activation: Activation = "relu"
    dropout: Fraction = 0.0

    @model_validator(mode="after")
    def _depth_is_6n_plus_2(self) -> ResNet:
        if (self.depth - 2) % 6:
            raise ValueError(f"depth: expected 6n+2 (8, 14, 20, 32, 44, 56, 110); got {self.depth}")
        return self


ArgumentValue = str | int | float | bool


APPLICATION_OWN_ARGUMENTS = ("weights", "include_top", "input_shape", "input_tensor", "classes")


class KerasApplication(StrictModel):
    """A `keras.applications` constructor (MobileNetV2, ResNet50, ...): untrained, or from pretrained
    weights with runner's head for your classes, its base frozen for some epochs, then fine-tuned."""

    kind: Literal["keras_application"] = "keras_application"
    name: Annotated[str, Field(pattern=APPLICATION_PATTERN)]
    # Extra keyword arguments for the constructor, e.g. {alpha = 0.35} for MobileNetV2.
    arguments: dict[str, ArgumentValue] = Field(default_factory=dict)
    # None: untrained. "imagenet": Keras' ImageNet weights (downloaded once into ~/.keras/models, which
    # needs a network the first time). Else the path of a weights file of this application (.h5 or
    # .weights.h5, with or without its top as include_top says).
    weights: Annotated[str, Field(min_length=1)] | None = None
    # false: the application without its classifier (pooling = "avg"), and runner's head: a Dense
    # layer for your classes (needed with ImageNet's weights unless you have its 1000 classes).
    include_top: bool = True
    # The application's own layers do not train (only runner's head) until this epoch (1-based;
    # from it on they are fine-tuned); 0: they train from the start. Pretrained weights keep their
    # batch-normalisation statistics either way (the base runs in inference mode, Keras' rule for
    # fine-tuning). Needs include_top = false (a head of runner's to train meanwhile).
    freeze_base_epochs: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _own_fields_not_arguments(self) -> KerasApplication:
        taken = [key for key in APPLICATION_OWN_ARGUMENTS if key in self.arguments]
        if taken:
            own = {"weights": "model.weights", "include_top": "model.include_top"}.get(taken[0])
            where = f"set {own} instead" if own else "runner sets it from the data"
            raise ValueError(f"arguments.{taken[0]}: expected not to be given here ({where}); got it")
        if self.freeze_base_epochs and self.include_top:
            raise ValueError(
                "freeze_base_epochs: expected include_top = false (runner's head trains while the "
                f"base is frozen); got {self.freeze_base_epochs} with include_top = true"
            )
        return self


class Factory(StrictModel):
    """Your own model: `package.module:function`, called as function(input_shape=, num_classes=, **arguments)
    inside the policy scope; it gets images scaled to [0, 1] and returns a keras.Model."""

    kind: Literal["factory"] = "factory"
    factory: Annotated[str, Field(pattern=FACTORY_PATTERN)]
    arguments: dict[str, ArgumentValue] = Field(default_factory=dict)
    # What the model returns. "logits": runner adds the softmax, in float32 (the mixed-precision rule),
    # which is the easy way to get it right; "probabilities": the model's own last activation, which
    # must then compute in float32 (dtype="float32" on it) or `runner check` refuses it.
    output: Literal["probabilities", "logits"] = "probabilities"


class Vit(StrictModel):
    """A Vision Transformer (Dosovitskiy et al. 2021) built by runner from Keras layers: patches
    embedded by a strided convolution, a learned position embedding, `depth` pre-norm encoder blocks
    (MultiHeadAttention, LayerNormalization, a GELU MLP), average pooling over the patches, the head.
    Layers are named block_<i>_attention, block_<i>_norm1, … for [precision.layers]."""

    kind: Literal["vit"] = "vit"
    patch_size: Annotated[int, Field(ge=1, le=32)] = 4
    # "conv": a 3×3 convolution (width / 2 filters, ReLU) before the patch embedding. Early convolutions
    # help a transformer see (Xiao et al. 2021): on shapes, 8,000 images, 5 epochs, test accuracy 0.86
    # with it against 0.37 without (measured here). "patch": the original ViT's linear patches alone.
    stem: Literal["conv", "patch"] = "conv"
    depth: Annotated[int, Field(ge=1, le=24)] = 2
    heads: Annotated[int, Field(ge=1, le=32)] = 4
    width: Annotated[int, Field(ge=8, le=1024)] = 64  # the tokens' dimension; a multiple of heads
    mlp_width: PositiveInt | None = None  # None: 2 × width
    dropout: Fraction = 0.0  # after the MLP and before the head
    # On the attention weights. Above 0 Keras computes attention on its explicit path (its softmax a
    # layer in the policy's dtype) instead of the fused one (softmax in float32).
    attention_dropout: Fraction = 0.0

    @model_validator(mode="after")
    def _width_splits_into_heads(self) -> Vit:
        if self.width % self.heads:
            raise ValueError(
                f"width: expected a multiple of heads ({self.heads}), split evenly between them; "
                f"got {self.width}"
            )
        return self


class KerasHub(StrictModel):
    """A keras_hub backbone class (ViTBackbone, ResNetBackbone, …) built from its arguments, without
    weights (no preset is downloaded), and runner's head: pooling over its output, then a Dense layer
    for your classes with a float32 softmax. Needs the extra: pip install -e '.[keras_hub]'."""

    kind: Literal["keras_hub"] = "keras_hub"
    backbone: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*Backbone$")]
    # The constructor's keyword arguments, e.g. {patch_size = 4, num_layers = 2, ...}; image_shape is
    # runner's to set from the data.
    arguments: dict[str, ArgumentValue | list[int]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _image_shape_is_runners(self) -> KerasHub:
        if "image_shape" in self.arguments:
            raise ValueError(
                "arguments.image_shape: expected not to be given here (runner sets it from the data); got it"
            )
        return self


ModelKind = Literal["seed_cnn", "mlp", "resnet", "keras_application", "factory", "vit", "keras_hub"]
ModelSpec = Annotated[
    Union[SeedCnn, Mlp, ResNet, KerasApplication, Factory, Vit, KerasHub],  # noqa: UP007
    Field(discriminator="kind"),
]


class AugmentationSpec(StrictModel):
    """Random changes to each training image, in the input pipeline (the model and its audit never
    see them), drawn by stateless ops keyed by (data.shuffle_seed, epoch, batch): a resumed run sees
    the very images the uninterrupted one did. None by default; never on validation or test data."""

    horizontal_flip: bool = False
    # Zero-pad by this many pixels on each side, then crop back at a random offset (CIFAR's 4).
    pad_crop: Annotated[int, Field(ge=0, le=64)] = 0
    # Shift by up to this fraction of the height and width, zeros filling in (Keras' RandomTranslation).
    translate: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.0
    # Add up to ± this fraction of the full range (255) to every pixel of an image.
    brightness: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # Scale each image's deviation from its mean by a factor in [1 - contrast, 1 + contrast].
    contrast: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    def describe(self) -> list[str]:
        """What runs, in words, for the report ([] when nothing does)."""
        said = ["horizontal flip"] if self.horizontal_flip else []
        said += [f"pad {self.pad_crop} and random crop"] if self.pad_crop else []
        said += [f"translate up to {self.translate:g} of the size"] if self.translate else []
        said += [f"brightness ± {self.brightness:g}"] if self.brightness else []
        said += [f"contrast × [{1 - self.contrast:g}, {1 + self.contrast:g}]"] if self.contrast else []
        return said


class DataSpec(StrictModel):
    source: SourceName = "shapes"
    # An explicit archive (cifar-10-python.tar.gz, mnist.npz, a fashion-mnist folder); else Keras' cache.
    path: str | None = None
    batch_size: PositiveInt = 32
    train_size: PositiveInt | None = None  # None: the whole split
    test_size: PositiveInt | None = None
    # Held out from the training split for per-epoch validation; 0 disables validation.
    validation_fraction: Fraction = 0.1
    shuffle_seed: Annotated[int, Field(ge=0)] = 0
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    # cifar100 only: its 100 fine classes or the 20 coarse superclasses they are grouped into.
    label_mode: Literal["fine", "coarse"] = "fine"

    @model_validator(mode="after")
    def _label_mode_is_cifar100s(self) -> DataSpec:
        if self.label_mode != "fine" and self.source != "cifar100":
            raise ValueError(
                f'data.label_mode: expected only with source = "cifar100"; got label_mode = '
                f'"{self.label_mode}" with source = "{self.source}"'
            )
        if self.source == "npz" and self.path is None:
            raise ValueError('data.path: expected the .npz file for source = "npz"; got none')
        return self

    # source = "image_folder" (path: one subfolder per class, streamed from disk; see docs/spec.md).
    # Labels: the subfolders sorted (Keras' image_dataset_from_directory rule), or this order (all of them).
    class_names: Annotated[list[str], Field(min_length=2)] | None = None
    # Every image resized to [height, width] (bilinear, no crop: Keras' defaults). image_folder: None is
    # 256 × 256 as Keras; tfds: None keeps the dataset's own size, which must then be fixed.
    image_size: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] | None = None
    channels: Literal[1, 3] | None = None  # grayscale or RGB, converted on decode; None: 3
    test_path: str | None = None  # a second folder of the same classes; else test_fraction is held out
    test_fraction: Fraction | None = None  # None: 0.2 without test_path
    # Files that do not decode are left out (counted and listed in report.json) instead of failing the
    # run: every file is decoded once before training, so the batches stay the same on a resume.
    skip_bad_files: bool | None = None

    # source = "tfds": a TensorFlow Datasets dataset prepared in data_dir (an optional extra; docs/spec.md).
    name: Annotated[str, Field(pattern=TFDS_NAME_PATTERN)] | None = None  # "mnist", "name/config:1.0.0"
    data_dir: str | None = None  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS' own default)
    train_split: TfdsSplit | None = None  # None: "train"; TFDS slicing such as "train[:90%]" works
    test_split: TfdsSplit | None = None  # None: "test"
    download: bool | None = None  # None: false; true lets TFDS download and prepare it into data_dir
    image_key: str | None = None  # the image and label features; None: the dataset's supervised_keys
    label_key: str | None = None

    @model_validator(mode="after")
    def _fields_of_the_source(self) -> DataSpec:
        for field, sources in SOURCE_FIELDS.items():
            if getattr(self, field) is not None and self.source not in sources:
                named = " or ".join(f'"{s}"' for s in sources)
                raise ValueError(
                    f'data.{field}: expected only with source = {named}; got it with source = "{self.source}"'
                )
        if self.source == "image_folder":
            self._check_image_folder()
        if self.source == "tfds":
            self._check_tfds()
        return self

    def _check_image_folder(self) -> None:
        if self.path is None:
            raise ValueError(
                'data.path: expected a folder with one subfolder per class for source = "image_folder"; '
                "got none"
            )
        if self.test_path is not None and self.test_fraction is not None:
            raise ValueError(
                f"data.test_fraction: expected either test_path or test_fraction; got both "
                f'(test_path = "{self.test_path}", test_fraction = {self.test_fraction})'
            )

    def _check_tfds(self) -> None:
        if self.name is None:
            raise ValueError('data.name: expected the TFDS dataset name for source = "tfds"; got none')
        if self.path is not None:
            raise ValueError(
                f"data.path: expected data.data_dir (the folder TFDS prepared the dataset in) with source = "
                f'"tfds"; got path = "{self.path}"'
            )
        if (self.image_key is None) != (self.label_key is None):
            given = "image_key" if self.label_key is None else "label_key"
            raise ValueError(
                f"data.{given}: expected image_key and label_key together (or neither: the dataset's "
                f"supervised_keys); got only {given}"
            )


IMAGE_FOLDER_FIELDS = ("class_names", "channels", "test_path", "test_fraction", "skip_bad_files")
TFDS_FIELDS = ("name", "data_dir", "train_split", "test_split", "download", "image_key", "label_key")
# Each source-specific field (None when not given) and the sources it means something to.
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(IMAGE_FOLDER_FIELDS, ("image_folder",)),
    **dict.fromkeys(TFDS_FIELDS, ("tfds",)),
    "image_size": ("image_folder", "tfds"),
}


class Adam(StrictModel):
    kind: Literal["adam"] = "adam"
    beta_1: Fraction = 0.9
    beta_2: Fraction = 0.999
    epsilon: Annotated[float, Field(gt=0)] = 1e-7


class AdamW(StrictModel):
    kind: Literal["adamw"] = "adamw"
    weight_decay: Annotated[float, Field(ge=0)] = 0.004
    beta_1: Fraction = 0.9
    beta_2: Fraction = 0.999
    epsilon: Annotated[float, Field(gt=0)] = 1e-7


class Sgd(StrictModel):
    kind: Literal["sgd"] = "sgd"
    momentum: Fraction = 0.0
    nesterov: bool = False


class RmsProp(StrictModel):
    kind: Literal["rmsprop"] = "rmsprop"
    rho: Fraction = 0.9
    momentum: Fraction = 0.0
    epsilon: Annotated[float, Field(gt=0)] = 1e-7


OptimizerKind = Literal["adam", "adamw", "sgd", "rmsprop"]
OptimizerSpec = Annotated[Union[Adam, AdamW, Sgd, RmsProp], Field(discriminator="kind")]  # noqa: UP007


# What a schedule or early stopping may watch: the epoch's training means or its validation ones.
Monitor = Literal["loss", "accuracy", "val_loss", "val_accuracy"]
NonNegative = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Constant(StrictModel):
    """training.learning_rate throughout (after the warmup, if any)."""

    kind: Literal["constant"] = "constant"
    warmup_epochs: NonNegative = 0.0  # linear from learning_rate / warmup steps up to learning_rate


class Cosine(StrictModel):
    """Half a cosine from learning_rate down to alpha × learning_rate at the last step (Model Garden's
    `cosine`, Keras' CosineDecay), after the warmup."""

    kind: Literal["cosine"] = "cosine"
    alpha: Fraction = 0.0
    warmup_epochs: NonNegative = 0.0


class Step(StrictModel):
    """learning_rate × factors[i] from epoch boundaries_epochs[i] on (Model Garden's `stepwise`)."""

    kind: Literal["step"] = "step"
    boundaries_epochs: Annotated[list[PositiveInt], Field(min_length=1)]
    factors: Annotated[list[PositiveFloat], Field(min_length=1)]
    warmup_epochs: NonNegative = 0.0

    @model_validator(mode="after")
    def _one_factor_per_boundary(self) -> Step:
        if self.boundaries_epochs != sorted(set(self.boundaries_epochs)):
            raise ValueError(
                f"training.schedule.boundaries_epochs: expected strictly increasing epochs; got "
                f"{self.boundaries_epochs}"
            )
        if len(self.factors) != len(self.boundaries_epochs):
            raise ValueError(
                f"training.schedule.factors: expected one factor per boundary "
                f"({len(self.boundaries_epochs)}); got {len(self.factors)}"
            )
        return self


class Exponential(StrictModel):
    """learning_rate × decay_rate^(epochs since the warmup / decay_epochs), continuous unless staircase
    (Model Garden's `exponential`, Keras' ExponentialDecay)."""

    kind: Literal["exponential"] = "exponential"
    decay_rate: Annotated[float, Field(gt=0, lt=1)] = 0.9
    decay_epochs: PositiveFloat = 1.0
    staircase: bool = False
    warmup_epochs: NonNegative = 0.0


class ReduceOnPlateau(StrictModel):
    """learning_rate, multiplied by `factor` when `monitor` has not improved by min_delta for
    `patience` epochs, never below min_lr (Keras' ReduceLROnPlateau). Its state is checkpointed."""

    kind: Literal["reduce_on_plateau"] = "reduce_on_plateau"
    monitor: Monitor = "val_loss"
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    patience: Annotated[int, Field(ge=0)] = 10
    min_delta: NonNegative = 1e-4
    cooldown: Annotated[int, Field(ge=0)] = 0
    min_lr: NonNegative = 0.0
    warmup_epochs: NonNegative = 0.0


ScheduleKind = Literal["constant", "cosine", "step", "exponential", "reduce_on_plateau"]
ScheduleSpec = Annotated[
    Union[Constant, Cosine, Step, Exponential, ReduceOnPlateau],  # noqa: UP007
    Field(discriminator="kind"),
]


class EarlyStoppingSpec(StrictModel):
    """Stop when `monitor` has not improved by min_delta for `patience` epochs; the best epoch's
    checkpoint is kept, and with restore_best the run ends (and is tested) with its weights."""

    monitor: Monitor = "val_loss"
    patience: Annotated[int, Field(ge=0)] = 5
    min_delta: NonNegative = 0.0
    restore_best: bool = True


class TrainingSpec(StrictModel):
    optimizer: OptimizerSpec = Field(default_factory=Adam)
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 1e-3
    schedule: ScheduleSpec = Field(default_factory=Constant)
    early_stopping: EarlyStoppingSpec | None = None
    # Gradient clipping (one of them), on the unscaled gradients: a LossScaleOptimizer unscales first.
    clip_norm: PositiveFloat | None = None  # each variable's gradient to this L2 norm
    clip_global_norm: PositiveFloat | None = None  # all gradients together to this L2 norm
    clip_value: PositiveFloat | None = None  # each element to [-clip_value, clip_value]
    # Targets (1 - s) on the label and s / classes spread over all (the loss the probe measures too).
    label_smoothing: Fraction = 0.0
    epochs: PositiveInt = 10
    # Steps per tf.function call: fewer Python round trips per image (float32 on 2 CPU cores: 1.16x
    # the tutorial at 1, 1.47x at 32). Keras calls back once per execution, so progress, checkpoints
    # and a stop request act at those boundaries. "auto": as many as fit in about a second, up to 32.
    steps_per_execution: IntOrAuto = "auto"
    # XLA. "auto": only where it was measured to pay, mixed_float16 on one CPU without float16
    # arithmetic (oneDNN emulates it; XLA's CPU compiler does not: 1.8x the quickstart's images/s);
    # elsewhere off (float32 and bfloat16 on this CPU: 0.4x and 0.26x). precision.xla_choice.
    jit_compile: BoolOrAuto = "auto"

    @model_validator(mode="after")
    def _schedule_fits_the_epochs(self) -> TrainingSpec:
        clips = [f for f in ("clip_norm", "clip_global_norm", "clip_value") if getattr(self, f) is not None]
        if len(clips) > 1:
            raise ValueError(
                f"training.{clips[1]}: expected one gradient clipping setting; got {' and '.join(clips)}"
            )
        schedule, epochs = self.schedule, self.epochs
        if schedule.warmup_epochs and schedule.warmup_epochs >= epochs:
            raise ValueError(
                f"training.schedule.warmup_epochs: expected fewer than training.epochs ({epochs}); got "
                f"{schedule.warmup_epochs:g}"
            )
        if isinstance(schedule, Step) and schedule.boundaries_epochs[-1] >= epochs:
            # A boundary the run never reaches is a schedule that silently never changes the rate.
            raise ValueError(
                f"training.schedule.boundaries_epochs: expected epochs before training.epochs ({epochs}); "
                f"got {schedule.boundaries_epochs}"
            )
        return self

    @property
    def monitors(self) -> list[tuple[str, str]]:
        """(field, metric) of what the schedule and early stopping watch."""
        found: list[tuple[str, str]] = []
        if self.early_stopping:
            found.append(("training.early_stopping.monitor", self.early_stopping.monitor))
        if isinstance(self.schedule, ReduceOnPlateau):
            found.append(("training.schedule.monitor", self.schedule.monitor))
        return found


class AccuracyDropVs(StrictModel):
    """`max_accuracy_drop_vs = { baseline = "float32", drop = 0.005 }`."""

    baseline: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    drop: Annotated[float, Field(gt=0, le=1)]


class ChecksSpec(StrictModel):
    """What a run must achieve; evaluated after training (the precision invariants always are)."""

    min_test_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    max_test_loss: Annotated[float, Field(gt=0)] | None = None
    # Fraction of steps the LossScaleOptimizer may skip for non-finite gradients.
    max_skipped_step_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    # Layers meant to compute in float32 under a mixed policy (no warning for these).
    float32_layers: list[str] = Field(default_factory=list)
    # The loss scale has no lower bound: this many skipped steps in a row means it has collapsed.
    max_consecutive_skipped_steps: PositiveInt = 50
    # Under pytest (runner's plugin, docs/testing.md): train and assert these checks, not only the
    # preflight; `pytest --runner-train` does it for every spec.
    run_in_tests: bool = False
    # Gradient fidelity against float32 (preflight, the whole model's gradient): below this cosine or
    # above this relative L2 error is a warning. None: the policy's default, measured by
    # benchmarks/numerics.py on every built-in kind and MobileNetV2/ResNet50/EfficientNetB0 untrained,
    # with margin (checks.GRADIENT_FIDELITY_DEFAULTS; docs/precision-checks.md).
    min_gradient_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    max_gradient_error: PositiveFloat | None = None
    # A layer whose gradient elements are zero in float16 but not in float32 beyond this share: a hint
    # with the loss scale that would keep them.
    max_underflow_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    # Under loss scaling: the scale at or below 1 for more than this many steps in a row is a warning
    # (the model is not learning in float16). None: not checked.
    max_steps_at_min_scale: PositiveInt | None = 1000
    # Each exported artifact's test accuracy, measured by its own runtime, may be at most this far
    # below the run's model's on the same images (docs/export.md); a miss names the artifact (exit 1).
    max_export_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    # A sweep's verdict on the policy (runner/reporting/parity.py): each point's test accuracy against
    # the baseline policy's point with the same other settings, paired by seed over [sweep] seeds; a
    # drop the 95 % interval cannot rule out past `drop` fails the sweep (exit 1).
    max_accuracy_drop_vs: AccuracyDropVs | None = None


class RuntimeSpec(StrictModel):
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # TensorBoard event files in the run directory: epoch metrics, learning rate, loss scale per step.
    tensorboard: bool = True
    # Seeds everywhere and TensorFlow's deterministic ops: the same spec gives the same metrics.
    deterministic: bool = False
    # A checkpoint every N steps as well as at every epoch's end (None: epochs only).
    checkpoint_every_steps: PositiveInt | None = None


class DistributionSpec(StrictModel):
    """Where the replicas of one training run are: this device ("none"), several devices of this machine
    ("mirrored"), or several machines ("multi_worker", the cluster from TF_CONFIG or Slurm's variables).
    `data.batch_size` stays the global batch; each replica computes batch_size / replicas of it."""

    strategy: Literal["none", "mirrored", "multi_worker"] = "none"
    # mirrored: the devices; None = every visible GPU. Without GPUs, N splits the CPU into N logical
    # devices (how it is tested on a CPU; no faster than one).
    replicas: PositiveInt | None = None
    cluster: Literal["tf_config", "slurm"] = "tf_config"
    # The longest any wait on a peer may take: joining the cluster, and each collective (a worker that
    # died is noticed sooner, by its missing heartbeats).
    peer_timeout_s: Annotated[int, Field(ge=10, le=86_400)] = 300

    @model_validator(mode="after")
    def _fields_of_the_strategy(self) -> DistributionSpec:
        if self.replicas is not None and self.strategy != "mirrored":
            raise ValueError(
                f'distribution.replicas: expected only with strategy = "mirrored"; got replicas = '
                f'{self.replicas} with strategy = "{self.strategy}" (multi_worker: one replica per device '
                "of each worker)"
            )
        return self


ExportFormat = Literal["keras", "saved_model", "litert", "onnx"]
Quantization = Literal["float16", "int8_dynamic", "int8", "keras_int8"]
# The formats each quantization applies to (runner/export/conversions.py APPLIES_TO; a test holds them equal).
QUANTIZATION_FORMATS: dict[str, tuple[str, ...]] = {
    "float16": ("litert",),
    "int8_dynamic": ("litert", "onnx"),
    "int8": ("litert",),
    "keras_int8": ("keras",),
}


class ExportSpec(StrictModel):
    """What a completed run leaves to deploy (docs/export.md). Every file is run by its own runtime in
    a fresh process without runner (`export_roundtrip`) on the fixed batch and on the whole test
    split: accuracy, agreement with the run's model, size and latency per artifact. `model.keras`
    (Keras), `saved_model/` (TensorFlow), `model.tflite` (LiteRT) and `model.onnx` (ONNX Runtime)
    take the uint8 images the run trained on and return float32 probabilities. LiteRT, ONNX and
    keras_int8 are converted from the float32 copy. `formats = []` exports nothing (`runner export`
    can still do it later)."""

    formats: list[ExportFormat] = ["keras"]
    # Under a mixed policy also a float32 copy (model-float32.keras, saved_model-float32/): the same
    # weights in the model built under float32, for hardware without fast float16 (keras#16129).
    float32: bool = True
    # Quantized artifacts beside the float32 ones: float16 (LiteRT: float16 weights), int8_dynamic
    # (LiteRT dynamic range; ONNX Runtime quantize_dynamic), int8 (LiteRT full integer, calibrated on
    # `calibration_images` training images), keras_int8 (Keras model.quantize("int8"), Keras 3).
    quantize: list[Quantization] = []
    # Training images full-int8 calibration sees, spread evenly over the training split.
    calibration_images: Annotated[int, Field(ge=1, le=10_000)] = 256

    @model_validator(mode="after")
    def _formats_once_each(self) -> ExportSpec:
        named: list[tuple[str, list[str]]] = [
            ("formats", list(self.formats)),
            ("quantize", list(self.quantize)),
        ]
        for field, values in named:
            twice = sorted({f for f in values if values.count(f) > 1})
            if twice:
                raise ValueError(
                    f"export.{field}: expected each value once; got {list(values)} ({', '.join(twice)} twice)"
                )
        for quantization in self.quantize:
            applies = QUANTIZATION_FORMATS[quantization]
            if not any(f in self.formats for f in applies):
                raise ValueError(
                    f'export.quantize: "{quantization}" quantizes the {" or ".join(applies)} export; '
                    f"expected {' or '.join(repr(f) for f in applies)} in export.formats; got "
                    f"{list(self.formats)}"
                )
        return self


class TrackingSpec(StrictModel):
    """Where a finished run is also logged (docs/tracking.md). Not part of the spec's hash, nor of the
    parameters logged: where a run is recorded is not what it is (as with --output)."""

    # Log the run to MLflow from its files once it has ended (needs the extra: pip install -e '.[mlflow]').
    mlflow: bool = False
    # None: MLFLOW_TRACKING_URI when set, else sqlite:///<output>/mlflow.db beside the run directories.
    tracking_uri: Annotated[str, Field(min_length=1)] | None = None
    # None: the spec's name (a sweep's variants: the name in its file, without the swept values).
    experiment: Annotated[str, Field(min_length=1, max_length=500)] | None = None


class ExperimentSpec(StrictModel):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    description: str = ""
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec)
    model: ModelSpec = Field(default_factory=SeedCnn)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    distribution: DistributionSpec = Field(default_factory=DistributionSpec)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _name_is_not_a_path(self) -> ExperimentSpec:
        if self.name in {".", ".."}:
            raise ValueError(f'name: expected a run name, not a path; got "{self.name}"')
        strategy = self.distribution.strategy
        if self.precision.policy == "auto" and strategy != "none":
            raise ValueError(
                f'precision.policy: expected a policy name with distribution.strategy = "{strategy}"; '
                'got "auto" (it is chosen by timing on one device; choose with `runner check --set '
                "precision.policy=auto` and name the policy it picks)"
            )
        if self.training.jit_compile is True and strategy != "none":
            raise ValueError(
                f'training.jit_compile: expected false with distribution.strategy = "{strategy}"; '
                "got true (XLA compiles a one-device step here: TensorFlow cannot compile the "
                "replicas' gradient sum into it, measured: merge_call inside the compiled step)"
            )
        for field, metric in self.training.monitors:
            if metric.startswith("val_") and self.data.validation_fraction == 0:
                raise ValueError(
                    f'{field}: expected a metric the run computes; got "{metric}" with '
                    "data.validation_fraction = 0 (no validation split: set a fraction, or monitor "
                    f'"{metric[4:]}")'
                )
        clipped = [f for f in ("clip_norm", "clip_global_norm", "clip_value") if getattr(self.training, f)]
        if clipped and strategy != "none":
            raise ValueError(
                f'training.{clipped[0]}: expected distribution.strategy = "none"; got "{strategy}" (Keras '
                "clips each replica's gradient before the all-reduce, not the global batch's)"
            )
        replicas = self.distribution.replicas
        if replicas is not None and self.data.batch_size % replicas:
            raise ValueError(
                f"data.batch_size: expected a multiple of distribution.replicas ({replicas}), the global "
                f"batch split evenly; got {self.data.batch_size}"
            )
        return self


# ---------------------------------------------------------------- loading


MAX_SPEC_BYTES = 1 << 20  # a spec is a page of TOML; anything larger is the wrong file
# Tables and arrays in a spec nest 3 or 4 levels (a sweep's list of lists, 5); past this it is the
# wrong file, and deeper values would reach Python's recursion limit in the parser and every copy.
MAX_NESTING = 32


def nesting(value: Any) -> int:
    """How deeply tables and arrays nest in a parsed TOML value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(where: str) -> SpecError:
    return SpecError(
        f"{where}: tables or arrays nested more than {MAX_NESTING} levels deep; expected a spec's "
        "tables and lists of values"
    )


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    """tomllib.loads, with a nesting too deep for its recursion (hundreds of `[[[`) one SpecError."""
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except RecursionError:
        raise _too_deep(where) from None
    if nesting(document) > MAX_NESTING:
        raise _too_deep(where)
    return document


def read_toml(path: str | Path) -> dict[str, Any]:
    """The raw TOML document at `path`; a missing, unreadable or malformed file is one SpecError."""
    path = Path(path)
    if not path.is_file():  # a folder, a device (/dev/zero), a FIFO: never opened, so never a hang
        what = "file not found" if not path.exists() else "is a directory" if path.is_dir() else "not a file"
        raise SpecError(f"{path}: {what}; expected a TOML experiment spec")
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {path.stat().st_size} bytes; expected a TOML spec of at most 1 MiB")
        # utf-8-sig: editors on Windows start files with a byte-order mark, which TOML does not allow.
        return _parse_toml(path.read_text(encoding="utf-8-sig"), str(path))
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror}); expected a readable TOML spec") from None


def load_spec(
    path: str | Path, overrides: Sequence[str] = (), patches: Sequence[str | Path] = ()
) -> ExperimentSpec:
    """Read, patch, override and validate one spec file (without a [sweep]); every failure is one
    SpecError. `patches`: TOML files whose tables are merged into the spec's, in order (what
    `runner check --fix` writes), before the --set overrides."""
    raw, source = read_patched(path, patches)
    if "sweep" in raw:
        raise SpecError(f"{path}: sweep: this command takes a single experiment; use `runner run` for sweeps")
    return spec_from_dict(raw, source=source, overrides=overrides)


def read_patched(path: str | Path, patches: Sequence[str | Path] = ()) -> tuple[dict[str, Any], str]:
    """The spec file's document with each patch file merged in, and the source its messages name."""
    raw = read_toml(path)
    for patch in patches:
        raw = merge_tables(raw, read_toml(patch))
    return raw, " + ".join(map(str, [path, *patches]))


def merge_tables(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `patch` merged in: tables merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def spec_from_dict(
    raw: Mapping[str, Any], source: str = "<spec>", overrides: Sequence[str] = ()
) -> ExperimentSpec:
    data = apply_overrides(raw, overrides, source)
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        lines = [_describe_error(err, source, overrides) for err in exc.errors()]
        raise SpecError("\n".join(lines)) from None


# ---------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Variant:
    """One experiment of a plan, and the sweep values that made it (empty without a sweep)."""

    spec: ExperimentSpec
    settings: dict[str, Any]
    group: str = ""  # the name in the spec file, which a sweep's variant names extend
    source: str = ""  # the spec file (and sweep values) it comes from, for messages
    objective: tuple[str, str] | None = None  # [sweep] objective and mode: the comparison ranks by it
    front: tuple[tuple[str, str], ...] = ()  # several objectives: the comparison marks their Pareto front


def flatten_table(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"precision": {"policy": [...]}}` and `{"precision.policy": [...]}` alike → dotted keys
    (a sweep's axes, and the spec fields that runs differ in)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_table(value, path + "."))
        else:
            flat[path] = value
    return flat


def _slug(value: Any) -> str:
    shown = f"{value:.3g}" if isinstance(value, float) else value  # a drawn 0.000123456789 → 0.000123
    return re.sub(
        r"[^A-Za-z0-9._-]+", "_", json.dumps(shown) if isinstance(shown, list | dict) else str(shown)
    )


# Experiments from one spec file. A plan is counted before it is made: a grid of 10^6 would take
# minutes and gigabytes only to be refused (and nobody runs a million trainings from one file).
MAX_PLAN = 10_000


def _read_plan(
    path: str | Path, overrides: Sequence[str], patches: Sequence[str | Path] = (), study: bool = True
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """A spec file with a [sweep]: its base (patches and overrides applied), the sweep's options and
    its axes. `study=False`: a study (trials = N) is refused, as no plan made in advance."""
    from runner import search

    raw, source = read_patched(path, patches)
    base = apply_overrides({k: v for k, v in raw.items() if k != "sweep"}, overrides, source)
    try:
        options, axes = search.read_sweep(raw["sweep"], str(path))
        _refuse_overridden_axes(axes, overrides, str(path))
        _refuse_unknown_distributions(axes, str(path))
    except search.SweepError as exc:
        raise SpecError(str(exc)) from None
    if options.is_study and not study:
        raise SpecError(
            f"{path}: sweep: a study of {options.trials} trials (Optuna chooses each as the others end), "
            "not a plan made in advance: run it alone, with `runner run` (runner.studies)"
        )
    return base, options, axes


def plan_size(path: str | Path, overrides: Sequence[str] = (), patches: Sequence[str | Path] = ()) -> int:
    """How many experiments a spec file asks for, counted without making them (bad input: SpecError)."""
    from runner import search

    if "sweep" not in read_patched(path, patches)[0]:
        return 1
    _, options, axes = _read_plan(path, overrides, patches)
    return search.plan_size(options, axes)


def load_plan(
    path: str | Path, overrides: Sequence[str] = (), patches: Sequence[str | Path] = ()
) -> list[Variant]:
    """The experiments a spec file asks for: itself, or one per point of its [sweep] (the grid of its
    lists, or `samples` random draws: search.py); at most MAX_PLAN, counted first.

    `--set` overrides apply to the base; the sweep's values are applied on top, per variant. Two
    variants that are the same experiment are refused, and an error every variant shares (a
    misspelled key in the base) is told once.
    """
    from runner import search

    raw, source = read_patched(path, patches)
    if "sweep" not in raw:
        spec = spec_from_dict(raw, source=source, overrides=overrides)
        return [Variant(spec, {}, spec.name, source)]
    base, options, axes = _read_plan(path, overrides, patches, study=False)
    size = search.plan_size(options, axes)
    if size > MAX_PLAN:
        raise SpecError(
            f"{path}: sweep: {size:,} experiments planned; expected at most {MAX_PLAN:,} from one spec file "
            '(fewer values per list, or method = "random" with fewer samples)'
        )
    seed = base.get("seed", 0) if type(base.get("seed", 0)) is int else 0  # a bad seed fails validation below
    try:
        points = search.points(options, axes, seed, str(path))
    except search.SweepError as exc:
        raise SpecError(str(exc)) from None
    variants: list[Variant] = []
    errors: dict[str, list[str]] = {}  # an error without its variant's prefix → the variants with it
    made: dict[str, str] = {}  # the experiment (its hash without the name) → the variant that is it
    for index, settings in enumerate(points, 1):
        data = json.loads(json.dumps(base))
        for key, value in settings.items():
            _set_path(data, key.split("."), value, str(path), f"sweep.{key}")
        suffix = "-".join(_slug(v) for v in settings.values())
        if options.method == "random":  # numbered: two draws may print alike
            suffix = f"{index:02d}-{suffix}"
        data["name"] = f"{str(data.get('name', 'run'))[: 63 - len(suffix)]}-{suffix}"[:64]
        where = f"{path} [sweep {', '.join(f'{k}={v}' for k, v in settings.items())}]"
        try:
            spec = spec_from_dict(data, source=where)
        except SpecError as exc:
            for line in str(exc).splitlines():
                errors.setdefault(line.removeprefix(f"{where}: "), []).append(where)
            continue
        experiment = spec_hash(spec.model_copy(update={"name": ""}))
        if experiment in made:
            raise SpecError(
                f"{made[experiment]} and {where.removeprefix(str(path)).strip()} are the same experiment "
                "(only their names differ); expected distinct variants (sweep over seed to repeat one)"
            )
        made[experiment] = where
        variants.append(
            Variant(spec, settings, str(base.get("name")), where, options.objective, options.front)
        )
    if errors:
        raise SpecError("\n".join(_shared_error(e, w, str(path), size) for e, w in errors.items()))
    return variants


@dataclass(frozen=True)
class StudyDefinition:
    """A spec file whose [sweep] is a study (`trials = N`): what runner/studies.py needs to make each
    trial's spec from the point Optuna chooses. Validated: every list value, and each range's bounds,
    applied to the base makes a valid spec."""

    base: dict[str, Any]  # the spec's table, patches and --set applied, without [sweep]
    options: Any  # search.SweepOptions (trials, method, seed, storage, pruning, objective)
    axes: dict[str, Any]  # field path → list of values or { distribution = [...] }
    source: str
    group: str  # the name in the spec file: each trial's name extends it
    seed: int  # the sampler's: [sweep] seed, else the spec's


def load_study(
    path: str | Path, overrides: Sequence[str] = (), patches: Sequence[str | Path] = ()
) -> StudyDefinition | None:
    """The study a spec file asks for, or None (no [sweep], or a plan fixed in advance)."""
    raw, source = read_patched(path, patches)
    if "sweep" not in raw:
        return None
    base, options, axes = _read_plan(path, overrides, patches)
    if not options.is_study:
        return None
    seed = base.get("seed", 0) if type(base.get("seed", 0)) is int else 0
    sampler_seed = options.seed if options.seed is not None else seed
    definition = StudyDefinition(base, options, axes, str(path), str(base.get("name")), sampler_seed)
    errors: dict[str, list[str]] = {}
    probes = _study_probes(axes)
    for settings in probes:  # each value once (the others at their first): a bad one is named
        where = f"{path} [sweep {', '.join(f'{k}={v}' for k, v in settings.items())}]"
        try:
            trial_spec(definition, settings, 0, where)
        except SpecError as exc:
            for line in str(exc).splitlines():
                errors.setdefault(line.removeprefix(f"{where}: "), []).append(where)
    if errors:
        raise SpecError("\n".join(_shared_error(e, w, str(path), len(probes)) for e, w in errors.items()))
    return definition


def first_point(axes: Mapping[str, Any]) -> dict[str, Any]:
    """Each axis's first value (a range: its low bound): a study's first probe, and the trial spec
    that stands for what every trial shares (the extras it needs, its [tracking])."""
    return {key: _candidates(axis)[0] for key, axis in axes.items()}


def _candidates(axis: Any) -> list[Any]:
    """A list's or choice's values; a range's two bounds."""
    return list(next(iter(axis.values())) if isinstance(axis, dict) else axis)


def _study_probes(axes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Points that together try every list value and each range's two bounds."""
    first = first_point(axes)
    probes, seen = [first], {json.dumps(first, sort_keys=True)}
    for key, axis in axes.items():
        for value in _candidates(axis)[1:]:
            point = {**first, key: value}
            if json.dumps(point, sort_keys=True) not in seen:
                seen.add(json.dumps(point, sort_keys=True))
                probes.append(point)
    return probes


def trial_spec(
    study: StudyDefinition, params: Mapping[str, Any], number: int, where: str | None = None
) -> ExperimentSpec:
    """Trial `number`'s experiment: the base with the chosen values, named `<name>-t<number>-<values>`
    (the number makes each trial's name, and so its spec hash and run directory, its own)."""
    data = json.loads(json.dumps(study.base))
    for key, value in params.items():
        _set_path(data, key.split("."), value, study.source, f"sweep.{key}")
    suffix = f"t{number:03d}-" + "-".join(_slug(v) for v in params.values())
    data["name"] = f"{study.group[: 63 - len(suffix)]}-{suffix}"[:64]
    where = where or f"{study.source} [trial {number}: {', '.join(f'{k}={v}' for k, v in params.items())}]"
    return spec_from_dict(data, source=where)


def _shared_error(error: str, where: list[str], path: str, size: int) -> str:
    """One line for an error however many variants have it."""
    if len(where) == 1:
        return f"{where[0]}: {error}"
    if len(where) == size:
        return f"{path} [every sweep variant]: {error}"
    return f"{where[0]}: {error} (and {len(where) - 1:,} other variants of {size:,})"


def _models_of(annotation: Any) -> list[type[BaseModel]] | None:
    """The pydantic models a field can hold ([] for a plain value; None for a free-form table)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if annotation is dict or get_origin(annotation) in (dict, Mapping):
        return None
    found: list[type[BaseModel]] = []
    for member in get_args(annotation):
        models = _models_of(member)
        if models is None:
            return None
        found += models
    return found


def _refuse_unknown_distributions(axes: Mapping[str, Any], source: str) -> None:
    """`"training.learning_rate" = { gaussian = [0, 1] }`: a table that is no distribution would be read
    as a nested field path (training.learning_rate.gaussian); said as what it is."""
    from runner import search

    for axis in axes:
        parents = axis.split(".")[:-1]
        models: list[type[BaseModel]] | None = [ExperimentSpec]
        for depth, part in enumerate(parents, 1):
            fields = [m.model_fields[part] for m in models or [] if part in m.model_fields]
            if not fields:
                break  # an unknown field: validation names it
            found = [_models_of(f.annotation) for f in fields]
            if any(m is None for m in found):
                break  # a free-form table (e.g. a Keras application's arguments): any key goes
            models = [m for group in found for m in group or []]
            if not models:
                raise SpecError(
                    f'{source}: sweep."{".".join(parents[:depth])}": '
                    f"{{ {axis.split('.')[depth]} = ... }} is not a distribution; expected a "
                    f"list of values or a table {{ {' | '.join(search.DISTRIBUTIONS)} = [...] }}"
                )


def _refuse_overridden_axes(axes: Mapping[str, Any], overrides: Sequence[str], source: str) -> None:
    """A --set on a field the sweep also sets would be silently replaced in every variant."""
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        for axis in axes:
            if key == axis or axis.startswith(key + ".") or key.startswith(axis + "."):
                raise SpecError(
                    f'{source}: --set {text} and sweep."{axis}" both set {axis}; the sweep would win in '
                    "every variant. Remove one of the two (or edit the sweep's list of values)"
                )


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value); the value is a TOML literal, or a bare string."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise SpecError(f"--set {text}: expected KEY.PATH=VALUE (e.g. precision.policy=float32)")
    try:
        parsed = _parse_toml(f"v = {value.strip()}", f"--set {text[:80]}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # `--set precision.policy=float32` needs no quotes
    return [p.strip() for p in parts], parsed


def _set_path(data: dict[str, Any], parts: list[str], value: Any, source: str, origin: str) -> None:
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise SpecError(f"{source}: {origin}: {where} is a value, not a table")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(raw, default=str))  # deep copy; TOML dates → strings
    for text in overrides:
        parts, value = parse_override(text)
        _set_path(data, parts, value, source, f"--set {text}")
    return data


# ---------------------------------------------------------------- error messages


def _describe_error(err: Mapping[str, Any], source: str, overrides: Sequence[str]) -> str:
    loc = _public_loc(err["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    origin = _override_for(field, overrides)
    prefix = f"{source}: {field}" + (f" (from --set {origin})" if origin else "")
    kind, received = err["type"], err.get("input")
    if kind == "extra_forbidden":
        valid = valid_keys_at(err["loc"][:-1])
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        did_you_mean = f'; did you mean "{hint[0]}"?' if hint else ""
        return f"{prefix}: unknown key; expected one of {', '.join(valid)}{did_you_mean}"
    if kind == "missing":
        return f"{prefix}: required, but missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"{prefix}: expected kind one of {ctx.get('expected_tags')}; got {_show(ctx.get('tag'))}"
    if kind == "union_tag_not_found":
        return f'{prefix}: expected a "kind" key naming the variant; got {_show(received)}'
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "").replace("'", "")
        expected = expected.replace(" or ", ", ")
        return f"{prefix}: expected one of {expected}; got {_show(received)}"
    if kind == "finite_number" or (isinstance(received, float) and not math.isfinite(received)):
        return f"{prefix}: expected a finite number; got {_show(received)}"
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        expected = PATTERN_TEXT.get(pattern, f"text matching {pattern}")
        return f"{prefix}: expected {expected}; got {_show(received)}"
    if kind == "value_error":
        return f"{source}: {str(err['msg']).removeprefix('Value error, ')}"
    return f"{prefix}: expected {_expected(err)}; got {_show(received)}"


PATTERN_TEXT = {
    NAME_PATTERN: "letters, digits, '.', '_' or '-' (1 to 64 of them; no paths)",
    FACTORY_PATTERN: '"package.module:function"',
    APPLICATION_PATTERN: "a keras.applications constructor name such as MobileNetV2",
    TFDS_NAME_PATTERN: 'a TFDS dataset name, with config and version if any: "mnist", "name/config:1.0.0"',
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _expected(err: Mapping[str, Any]) -> str:
    if err["type"] in _BOUNDS:
        (bound,) = err["ctx"].values()
        return f"a value {_BOUNDS[err['type']]} {bound}"
    msg = str(err["msg"])
    for prefix in ("Input should be ", "Value should have "):
        if msg.startswith(prefix):
            return msg.removeprefix(prefix)
    return msg[0].lower() + msg[1:]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict | list | tuple):
        text = json.dumps(value, default=str)
        shown = text if len(text) <= 60 else text[:57] + "..."
        return f"{shown} ({type(value).__name__})"
    return f"{value!r} ({type(value).__name__})" if isinstance(value, bool | float | int) else repr(value)


_TAGS = set(get_args(ModelKind)) | set(get_args(OptimizerKind))
_UNION_FIELDS = {"model", "optimizer"}


def _public_loc(loc: Iterable[Any]) -> tuple[Any, ...]:
    """Drop pydantic's discriminator tags and type names (model.seed_cnn.filters → model.filters)."""
    out: list[Any] = []
    previous = None
    for part in loc:
        is_tag = part in _TAGS and previous in _UNION_FIELDS
        previous = part
        if is_tag or (isinstance(part, str) and part.startswith(("function-", "tagged-"))):
            continue
        out.append(part)
    return tuple(out)


def _override_for(field: str, overrides: Sequence[str]) -> str | None:
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key == field or field.startswith(key + "."):
            return text
    return None


def _model_for(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The pydantic model class behind a field annotation (a discriminated union needs its tag)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for member in get_args(annotation):
        model = _model_for(member, tag)
        if model is not None and model.model_fields["kind"].default == tag:
            return model
    return None


def valid_keys_at(err_loc: Sequence[Any]) -> list[str]:
    """Field names allowed where a pydantic error points (its loc, tags included, minus the key)."""
    model: type[BaseModel] | None = ExperimentSpec
    parts = list(err_loc)
    while parts and model is not None:
        part = parts.pop(0)
        if part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        tag = parts.pop(0) if parts and parts[0] in _TAGS else None
        model = _model_for(annotation, tag)
    return sorted(model.model_fields) if model is not None else []


# ---------------------------------------------------------------- output


def spec_to_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """JSON/TOML-ready dict of the resolved spec (None fields dropped: TOML has no null)."""
    return spec.model_dump(mode="json", exclude_none=True)


def experiment_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec's dict without [tracking]: what the run is, not where it is logged."""
    return {key: value for key, value in spec.items() if key != "tracking"}


def spec_to_toml(spec: ExperimentSpec) -> str:
    import tomli_w

    return tomli_w.dumps(spec_to_dict(spec))


def spec_hash(spec: ExperimentSpec) -> str:
    """Short, stable hash of the resolved spec: equal specs give equal run-directory suffixes. [tracking]
    is left out: logging a run to MLflow or not makes the same experiment."""
    canonical = json.dumps(experiment_fields(spec_to_dict(spec)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"  # the draft pydantic generates


def _study_schema() -> dict[str, Any]:
    """A study's options in [sweep] (runner/studies.py; docs/studies.md)."""
    return {
        "trials": {"type": "integer", "minimum": 1},
        "seed": {
            "anyOf": [
                {"type": "integer", "minimum": 0, "description": "a study's sampler seed"},
                {"$ref": "#/$defs/SweepEntry"},
            ]
        },
        "storage": {"type": "string", "minLength": 1},
        "pruning": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["median", "hyperband", "none"], "default": "median"},
                "startup_trials": {"type": "integer", "minimum": 0},
                "warmup_epochs": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
    }


def _sweep_defs() -> dict[str, Any]:
    """A [sweep] as search.read_sweep reads it: its options, and dotted field paths (or tables nesting
    them) to non-empty lists or (method = "random") distribution tables."""
    bounds = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}
    return {
        "Sweep": {
            "title": "Sweep",
            "description": "One experiment per point of the cartesian product of these lists (method = "
            '"grid"), or `samples` random draws (method = "random"), each `seeds` times; or, with `trials`, '
            'an Optuna study (docs/studies.md): e.g. "precision.policy" = ["float32", '
            '"mixed_float16"], "training.learning_rate" = { log_uniform = [1e-4, 1e-2] }',
            "type": "object",
            "minProperties": 1,
            "properties": {
                "method": {"enum": ["grid", "random", "tpe", "cmaes"], "default": "grid"},
                "samples": {"type": "integer", "minimum": 1},
                "seeds": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
                **_study_schema(),
                "objective": {
                    "anyOf": [
                        {"$ref": "#/$defs/SweepObjective"},
                        {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/SweepObjective"}},
                    ]
                },
                "mode": {
                    "anyOf": [{"enum": ["max", "min"]}, {"type": "array", "items": {"enum": ["max", "min"]}}]
                },
            },
            "additionalProperties": {"$ref": "#/$defs/SweepEntry"},
        },
        "SweepObjective": {
            "enum": [
                "test_accuracy",
                "test_loss",
                "val_accuracy",
                "val_loss",
                "images_per_second",
                "step_time_ms",
                "peak_host_memory_mb",
            ]
        },
        "SweepEntry": {
            "anyOf": [
                {"type": "array", "minItems": 1},
                {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "properties": {
                        "log_uniform": bounds,
                        "uniform": bounds,
                        "int_uniform": {**bounds, "items": {"type": "integer"}},
                        "choice": {"type": "array", "minItems": 1},
                    },
                    "additionalProperties": False,
                },
                {"type": "object", "additionalProperties": {"$ref": "#/$defs/SweepEntry"}},
            ]
        },
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file: ExperimentSpec plus the [sweep] that `runner run` and
    `runner validate` expand (one experiment, ExperimentSpec, has no sweep)."""
    schema = ExperimentSpec.model_json_schema()
    schema["properties"]["sweep"] = {"$ref": "#/$defs/Sweep"}
    schema["$defs"].update(_sweep_defs())
    return {"$schema": SCHEMA_DIALECT, **schema}
