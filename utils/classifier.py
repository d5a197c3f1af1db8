"""`from utils.classifier import Classifier`: the documented import of the Python API, kept. The code is
`utils.deploy.classifier`; this name is the same module object."""
import sys

from utils.deploy import classifier as _module

sys.modules[__name__] = _module
