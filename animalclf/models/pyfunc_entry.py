"""What MLflow executes to load the registered model ("models from code"): see :mod:`animalclf.models.pyfunc`."""

import mlflow

from animalclf.models.pyfunc import ImageClassifier

mlflow.models.set_model(ImageClassifier())
