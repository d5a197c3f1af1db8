"""Helpers for tests, demos and benchmarks: never imported by the product (a contract says so).

    tiny_ernie.py   a randomly initialised ERNIE 3.0 in PaddleNLP format (`python -m utils.tiny_ernie`)
    synthetic.py    learnable keyword tasks
    cloze.py        a tiny ERNIE whose masked-LM head knows the label words
    ray_local.py    a throwaway multi-node Ray cluster on this machine
"""
