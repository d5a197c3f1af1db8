"""`python -m utils.label_words`: the documented command of the label-word checker, kept where users
know it. The code is `utils.model.label_words`; this name is the same module object."""
import sys

from utils.model import label_words as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
