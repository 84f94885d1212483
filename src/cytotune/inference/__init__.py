"""Using a trained run: predict on new images, load it in Python, export it standalone.

    import cytotune
    model = cytotune.load("runs/x")                  # torch.nn.Module, LoRA merged
    model.predict(["cell.png"]).to_frame()

    from cytotune.inference import predict, export
    predict("runs/x", "new_images/", out="predictions.csv")
    export("runs/x", "exported/", format="onnx")     # or "safetensors" (plain timm/open_clip/HF)

Command line: ``cytotune predict RUN_DIR INPUT --out predictions.csv`` and
``cytotune export RUN_DIR [RUN_DIR ...] --format safetensors|onnx --out DIR`` (see ``cli``).
"""
from typing import TYPE_CHECKING

from cytotune._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers; at run time each name is
    # imported on first use, so a light part does not pull in torch through the rest
    from cytotune.inference.export import (FORMATS, ONNX_ATOL, ExportError, ExportResult, OnnxWrapper,
                                            export)
    from cytotune.inference.model import CytotuneModel, Predictions, load
    from cytotune.inference.predict import (PredictionInputs, collect_inputs, predict, predict_files,
                                            write_csv_atomic)
    from cytotune.inference.run import RunDirError, RunFiles, read_run

_EXPORTS = {
    "FORMATS": "cytotune.inference.export",
    "ONNX_ATOL": "cytotune.inference.export",
    "ExportError": "cytotune.inference.export",
    "ExportResult": "cytotune.inference.export",
    "OnnxWrapper": "cytotune.inference.export",
    "export": "cytotune.inference.export",
    "CytotuneModel": "cytotune.inference.model",
    "Predictions": "cytotune.inference.model",
    "load": "cytotune.inference.model",
    "PredictionInputs": "cytotune.inference.predict",
    "collect_inputs": "cytotune.inference.predict",
    "predict": "cytotune.inference.predict",
    "predict_files": "cytotune.inference.predict",
    "write_csv_atomic": "cytotune.inference.predict",
    "RunDirError": "cytotune.inference.run",
    "RunFiles": "cytotune.inference.run",
    "read_run": "cytotune.inference.run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "load", "CytotuneModel", "Predictions",
    "predict", "predict_files", "collect_inputs", "PredictionInputs", "write_csv_atomic",
    "export", "ExportResult", "ExportError", "FORMATS", "ONNX_ATOL", "OnnxWrapper",
    "read_run", "RunFiles", "RunDirError",
]
