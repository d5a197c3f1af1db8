"""Few-shot text classification with P-tuning: training (Paddle) and the Paddle-free deployment.

`from utils import Classifier` is the Python API (utils/deploy/classifier.py). The names here load on
first use (PEP 562): `import utils`, which every `from utils.x import y` runs first, imports
nothing, so each script loads only the modules it uses (infer.py no Paddle, train.py's helpers
no onnxruntime).
"""

_LAZY = {"Classifier": "deploy.classifier", "Prediction": "deploy.classifier", "LabelSetPrediction": "deploy.classifier",
         "UserError": "errors"}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
