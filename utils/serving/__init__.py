"""The HTTP service (serve.py) and Ray (infer.py --ray, serve.py --ray). No Paddle.

    config.py       `ServiceConfig`: the export, device, batching and request limits
    app.py          `Service`: one class holding the model, its methods the routes (uvicorn and Ray Serve)
    batcher.py      dynamic micro-batching onto N model instances
    requests.py     request checks (4xx naming the field) and response bodies
    middleware.py   body limit, metrics and X-Served-By, the one error shape
    ml_backend.py   Label Studio's ML backend protocol (the checks and bodies of the /label-studio routes)
    metrics.py      the Prometheus metrics
    ray_serve.py    the service as Ray Serve replicas, every model in each (`build_app` for `serve run`)
    ray_rollout.py  serve.py --ray's swaps: the new export verified, then rolled out by Ray Serve
    ray_infer.py    infer.py's file, classified by one Ray actor per node
"""
