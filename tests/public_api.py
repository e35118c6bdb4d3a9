"""The names ``import rarekit`` exports: its public attributes that are not submodules, and the two
imbalanced-learn drop-ins it loads on first use (rarekit has no ``__all__``: see its ``__init__``)."""
import types

import rarekit

LAZY = ["RandomOverSampler", "RandomUnderSampler"]
PUBLIC_NAMES = sorted([name for name, value in vars(rarekit).items()
                       if not name.startswith("_") and not isinstance(value, types.ModuleType)] + LAZY)
