"""Import PyTorch ShuffleNet checkpoints (torchvision, Megvii ShuffleNet-Series, fine-tuned copies)
into npshuffle model files, without torch and without running any code from the file."""

from .convert import ConversionError, convert_file, convert_state_dict, find_state_dict

__all__ = ["ConversionError", "convert_file", "convert_state_dict", "find_state_dict"]
