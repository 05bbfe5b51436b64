"""npshuffle: ShuffleNet V1/V2 image classification in NumPy + Numba, offline, without torch.

    >>> import npshuffle
    >>> p = npshuffle.predict("examples/tulip.jpg")          # doctest: +SKIP
    >>> p.label, p.probability                               # doctest: +SKIP
    >>> model = npshuffle.load_model("imagenet_v1_g3_x0_5")  # reuse for many calls  # doctest: +SKIP
    >>> npshuffle.predict(["a.jpg", "b.png"], model=model)   # doctest: +SKIP
"""

from .backends import BackendError
from .images import ImageError
from .model import Model
from .model_file import ModelFileError
from .predict import Prediction, load_model, predict
from .zoo import describe_models as list_models

__version__ = "0.1.0"
__all__ = [
    "BackendError",
    "ImageError",
    "Model",
    "ModelFileError",
    "Prediction",
    "list_models",
    "load_model",
    "predict",
]
