"""Deployment formats: LiteRT (.tflite) and ONNX (.onnx), plain or quantized, and Keras' own int8.

Every conversion starts from the model's float32 copy (the same weights in the model built under
float32): LiteRT never accepted a mixed_float16 graph (tensorflow#46380), and a deployment format
chooses its own precision, which is what `quantize` names:

- no quantization: float32 `model.tflite` (TensorFlow's LiteRT converter), `model.onnx` (tf2onnx);
- `float16`: LiteRT with float16 weights (computed in float32);
- `int8_dynamic`: LiteRT dynamic range (int8 weights, activations quantized per call), and ONNX
  Runtime's `quantize_dynamic` (int8 weights);
- `int8`: LiteRT full integer, its activation ranges calibrated on training images;
- `keras_int8`: Keras' own `model.quantize("int8")` (Dense, EinsumDense, Embedding), a `.keras` file.

A conversion this TensorFlow, Keras or converter cannot do is a skip with its reason (the record's
row), never a traceback. The runtimes that run the files are the extra's: `ai-edge-litert`'s
interpreter (TensorFlow's own `tf.lite.Interpreter` is deprecated) and `onnxruntime`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import compat
from runner.spec import QUANTIZATION_FORMATS as APPLIES_TO
from runner.spec import BadInput

EXPORT_EXTRA = "pip install -e '.[export]'"
# What each format needs beyond the core install, by importable module and the package it comes in.
NEEDS = {
    "litert": {"ai_edge_litert": "ai-edge-litert"},
    "onnx": {"tf2onnx": "tf2onnx", "onnxruntime": "onnxruntime", "onnx": "onnx"},
}
SUFFIX = {"keras": ".keras", "litert": ".tflite", "onnx": ".onnx"}
ONNX_OPSET = 17  # onnxruntime >= 1.14 runs it; tf2onnx 1.16/1.17 write it


class ExportExtraMissing(BadInput):
    """A format asked for without the optional packages that convert and run it."""


class ConversionSkipped(Exception):  # noqa: N818 - a skip, recorded with its reason, not an error
    """This TensorFlow, Keras or converter cannot make the artifact: the reason goes in the record."""


def missing_packages(formats: Sequence[str]) -> list[str]:
    """The packages the formats need that are not importable here (found without importing them)."""
    missing = []
    for fmt in formats:
        for module, package in NEEDS.get(fmt, {}).items():
            if importlib.util.find_spec(module) is None and package not in missing:
                missing.append(package)
    return missing


def require_extra(formats: Sequence[str], where: str = "export.formats") -> None:
    """Bad input, before anything trains: a format asked for without the extra that runs it."""
    missing = missing_packages(formats)
    if missing:
        asked = ", ".join(f for f in formats if f in NEEDS)
        raise ExportExtraMissing(
            f"{where}: {asked} needs {', '.join(missing)}, not installed here; they are the optional "
            f"export extra: {EXPORT_EXTRA}"
        )


@dataclass(frozen=True)
class Conversion:
    """One converted artifact: its file (relative to the run directory), format and quantization."""

    path: str
    format: str  # "litert" | "onnx" | "keras" (keras_int8)
    quantization: str | None  # None: float32


def conversion_path(fmt: str, quantization: str | None) -> str:
    return f"model{'' if quantization is None else '-' + quantization}{SUFFIX[fmt]}"


def planned(formats: Sequence[str], quantize: Sequence[str]) -> list[Conversion]:
    """The converted files: each deployment format in float32, then each quantization where it applies."""
    plain = [Conversion(conversion_path(f, None), f, None) for f in formats if f in NEEDS]
    quantized = [
        Conversion(conversion_path(f, q), f, q) for q in quantize for f in APPLIES_TO[q] if f in formats
    ]
    return plain + quantized


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters' own chatter (absl, MLIR, Python logging, prints) stays out of the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), compat.native_stderr_to(Path("/dev/null")):
            yield
    finally:
        root.setLevel(level)


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[-1] if text else '')[:300]}"


class Converter:
    """Makes each planned artifact from one float32 model; the SavedModel LiteRT converts from is
    written once, in a scratch folder, and removed on close."""

    def __init__(self, model: Any, calibration: np.ndarray) -> None:
        self.model = model  # float32, uncompiled
        self.calibration = calibration  # (n, H, W, C) uint8 training images, for full int8
        self._scratch = tempfile.TemporaryDirectory(prefix="runner-convert-")
        self._saved_model: Path | None = None

    def close(self) -> None:
        self._scratch.cleanup()

    def write(self, conversion: Conversion, target: Path) -> dict[str, Any]:
        """Write the artifact to `target`; what was done, for the record. ConversionSkipped when the
        tools here cannot do it."""
        if conversion.format == "litert":
            return self._litert(conversion.quantization, target)
        if conversion.format == "onnx":
            return self._onnx(conversion.quantization, target)
        return self._keras_int8(target)

    # ------------------------------------------------------------ LiteRT

    def _saved(self) -> Path:
        if self._saved_model is None:
            path = Path(self._scratch.name) / "saved_model"
            with _quiet():
                compat.export_saved_model(self.model, path)
            self._saved_model = path
        return self._saved_model

    def _litert(self, quantization: str | None, target: Path) -> dict[str, Any]:
        tf = compat.tensorflow()
        lite = getattr(tf, "lite", None)
        if lite is None or not hasattr(lite, "TFLiteConverter"):
            raise ConversionSkipped(f"TensorFlow {tf.__version__} has no tf.lite.TFLiteConverter")
        converter = lite.TFLiteConverter.from_saved_model(str(self._saved()))
        done: dict[str, Any] = {"converter": f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__})"}
        if quantization is not None:
            converter.optimizations = [lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int8":
            images = self.calibration

            def representative() -> Iterator[list[np.ndarray]]:
                for i in range(len(images)):
                    yield [images[i : i + 1]]

            converter.representative_dataset = representative
            # Every op in integers, or the conversion fails (no silent float fallback); the model's
            # uint8 input and float32 probabilities stay, converted at the graph's edges.
            converter.target_spec.supported_ops = [lite.OpsSet.TFLITE_BUILTINS_INT8]
            done["calibration_images"] = len(images)
        try:
            with _quiet():
                flat = converter.convert()
        except Exception as exc:  # noqa: BLE001 - an op the converter cannot take: the skip's reason
            raise ConversionSkipped(f"the LiteRT converter refused it ({_last_line(exc)})") from None
        target.write_bytes(flat)
        return done

    # ------------------------------------------------------------ ONNX

    def _onnx(self, quantization: str | None, target: Path) -> dict[str, Any]:
        try:
            import onnx
            import tf2onnx
        except Exception as exc:  # noqa: BLE001 - installed but not importable beside this TensorFlow
            raise ConversionSkipped(
                f"tf2onnx/onnx do not import beside TensorFlow {compat.tensorflow().__version__} "
                f"({_last_line(exc)}; measured: onnx 1.19 needs a newer ml_dtypes than TensorFlow "
                "2.16-2.18 pin, and the export extra takes onnx<1.18 there: pip install -e '.[export]')"
            ) from None

        tf = compat.tensorflow()
        shape = tuple(self.model.inputs[0].shape[1:])
        dtype = self.model.inputs[0].dtype
        dtype = getattr(dtype, "name", dtype)
        signature = [tf.TensorSpec((None, *shape), dtype, name="images")]
        model = self.model
        done: dict[str, Any] = {"converter": f"tf2onnx {tf2onnx.__version__}, opset {ONNX_OPSET}"}

        @tf.function(input_signature=signature)
        def serve(images: Any) -> Any:
            return model(images, training=False)

        plain = target if quantization is None else Path(self._scratch.name) / "float32.onnx"
        try:
            with _quiet():
                proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=ONNX_OPSET)
        except Exception as exc:  # noqa: BLE001 - an op tf2onnx cannot map: the skip's reason
            raise ConversionSkipped(f"tf2onnx refused it ({_last_line(exc)})") from None
        onnx.save(proto, str(plain))
        if quantization is None:
            return done
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quiet():
                quantize_dynamic(str(plain), str(target), weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001
            raise ConversionSkipped(
                f"onnxruntime's quantize_dynamic refused it ({_last_line(exc)})"
            ) from None
        import onnxruntime

        done["quantizer"] = (
            f"onnxruntime.quantization.quantize_dynamic (onnxruntime {onnxruntime.__version__})"
        )
        return done

    # ------------------------------------------------------------ Keras int8

    def _keras_int8(self, target: Path) -> dict[str, Any]:
        why = compat.needs_keras_3('"keras_int8" (model.quantize)')
        if why:
            raise ConversionSkipped(why)
        keras = compat.keras()
        try:
            copy = keras.models.clone_model(self.model)
        except Exception as exc:  # noqa: BLE001 - a layer that cannot be rebuilt from its config
            raise ConversionSkipped(f"the model cannot be cloned to quantize ({_last_line(exc)})") from None
        copy.set_weights(self.model.get_weights())
        try:
            with _quiet():
                copy.quantize("int8")
        except Exception as exc:  # noqa: BLE001 - no layer Keras can quantize, and the like
            raise ConversionSkipped(f"model.quantize refused it ({_last_line(exc)})") from None
        every = copy._flatten_layers(include_self=False, recursive=True)  # noqa: SLF001 - both Kerases have it
        quantized = [layer.name for layer in every if getattr(layer, "quantization_mode", None)]
        if not quantized:
            raise ConversionSkipped(
                "model.quantize quantizes Dense, EinsumDense and Embedding layers; this model has none"
            )
        compat.save_keras_file(copy, target)
        return {
            "converter": f"keras {keras.__version__} model.quantize('int8')",
            "quantized_layers": len(quantized),
        }
