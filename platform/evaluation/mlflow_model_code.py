"""The models-from-code file of a logged hiir model: MLflow copies it into the model and runs it on load."""
import mlflow

from hiir.platform.evaluation.mlflow_model import RestorationModel

mlflow.models.set_model(RestorationModel())
