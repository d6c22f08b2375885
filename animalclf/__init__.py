"""animalclf: fine-tune, tune, track and serve an animal image classifier on Ray."""

from animalclf.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
