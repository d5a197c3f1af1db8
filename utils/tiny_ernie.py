"""`python -m utils.tiny_ernie`: the documented command that builds the tiny random ERNIE (`make demo`),
kept where users know it. The code is `utils.testing.tiny_ernie`; this name is the same module object."""
import sys

from utils.testing import tiny_ernie as _module

if __name__ == "__main__":
    sys.exit(_module.run_cli(_module.main))
sys.modules[__name__] = _module
