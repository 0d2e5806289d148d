"""A trained model as an MLflow model: a models-from-code pyfunc whose artifacts are the exported
`model.safetensors` and `model.json` (nothing in it is a pickle), restoring with `restore.py`'s code.

Input and output are a DataFrame column `image` of encoded image bytes (PNG out; in, anything PIL reads).
That serves REST best: the JSON body carries each image base64-encoded (`{"dataframe_split": {"columns":
["image"], "data": [["<base64 PNG>"]]}}`, answered `{"predictions": [{"image": "<base64 PNG>"}]}`), about a
third larger than the file, where uint8 arrays as JSON numbers are 3-4x the raw pixels and one tensor forces
every image of a request to one size. Params `tile`, `overlap` and `self_ensemble` are `hiir restore`'s.

`log_arguments` is what `tracking.Store.log_model` logs for an exported run: the code file, the two
artifacts, the signature and pinned pip requirements (so MLflow never loads the model to infer them).
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel

from hiir.platform.evaluation.evaluate import load_exported, resolve_device
from hiir.platform.evaluation.restore import encode_png, read_image, restore_image

CODE = Path(__file__).with_name("mlflow_model_code.py")  # the file MLflow copies into the model and runs
COLUMN = "image"
PARAMS = {"tile": 0, "overlap": 16, "self_ensemble": False}  # `hiir restore`'s defaults
# The distributions the model's code imports; hiir brings the rest. Local labels (torch's +cpu) are dropped,
# as MLflow does, so that the pins install from PyPI.
REQUIREMENTS = ("hiir", "mlflow", "torch", "safetensors", "einops", "numpy", "pandas", "pillow")


class RestorationModel(PythonModel):
    """Restores each row's image with the exported weights (on the first CUDA GPU if torch sees one)."""

    def load_context(self, context) -> None:
        # MLflow keeps both artifacts side by side under artifacts/, where load_exported finds model.json
        self.model = load_exported(context.artifacts["weights"]).to(resolve_device("auto"))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        p = {**PARAMS, **(params or {})}
        images = model_input[COLUMN] if COLUMN in model_input else model_input.iloc[:, 0]
        channels = self.model.config.in_channels
        restored = [encode_png(restore_image(self.model, read_image(bytes(data), channels, name=f"row {i}"),
                                             tile=int(p["tile"]), overlap=int(p["overlap"]),
                                             self_ensemble=bool(p["self_ensemble"])))
                    for i, data in enumerate(images)]
        return pd.DataFrame({COLUMN: restored})


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def signature():
    """PNG bytes in and out, and the restore params with their defaults. The example only gives the types."""
    example = pd.DataFrame({COLUMN: [encode_png(np.zeros((8, 8, 3), np.uint8))]})
    return infer_signature(example, example, params=PARAMS)


def log_arguments(export_dir: Path) -> dict[str, Any]:
    """`mlflow.pyfunc.log_model`'s arguments for the weights `hiir train` exported to `export_dir`."""
    return {"python_model": str(CODE), "signature": signature(), "pip_requirements": pip_requirements(),
            "artifacts": {"weights": str(export_dir / "model.safetensors"), "config": str(export_dir / "model.json")}}
