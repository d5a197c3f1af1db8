"""`serve run utils.ray_serve:build_app ...`: the documented import path of the Ray Serve application
builder (KubeRay's RayService too), kept where deployments name it. The code is
`utils.serving.ray_serve`; this name is the same module object."""
import sys

from utils.serving import ray_serve as _module

sys.modules[__name__] = _module
