"""The run directory: its file names, its checkpoints and the rules of one run per directory. No Paddle.

    names.py         every file name of a run and a checkpoint (one spelling)
    checkpoints.py   checkpoints that are whole or ignored, verified before use; rotation; pause points
    plan.py          what a run may reuse, resume or remove in its output directory; the directory lock
    record.py        run.json: the command lines that wrote the directory and the data files they read
"""
