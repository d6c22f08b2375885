"""animalclf: fine-tune, tune, track and serve an animal image classifier on Ray."""

import os

# Ray 2.60 heads (`ray start --head`) require token auth, and Ray reads this when it is imported;
# an explicit RAY_AUTH_MODE (e.g. "disabled") wins. The token is ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from animalclf.errors import UserError  # noqa: E402

__all__ = ["UserError"]
__version__ = "0.1.0"
