"""Import PyTorch ShuffleNet checkpoints (torchvision, Megvii ShuffleNet-Series, fine-tuned copies)
into npshuffle model files, without torch and without running any code from the file.

:func:`convert_file` writes a model file; :func:`convert_checkpoint` (a file) and
:func:`convert_state_dict` (arrays) return the folded weights without writing anything.
"""

from .convert import ConversionError, Converted, convert_checkpoint, convert_state_dict, find_state_dict
from .write import convert_file

__all__ = [
    "ConversionError", "Converted", "convert_checkpoint", "convert_file", "convert_state_dict", "find_state_dict",
]
