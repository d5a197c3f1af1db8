"""The Paddle-free deployment: an export directory in, predictions out (infer.py, the Python API).

    format.py       the export's file names, ONNX input/output names, format version (one spelling)
    bundle.py       the export as a reader sees it: manifest, labels, every file's size and sha256
    preprocess.py   texts -> model inputs exactly as the training template builds them (tokenizers);
                    `DocumentWindows`: a long text -> the windows the model reads (train.py uses it too)
    predictor.py    the onnxruntime session, length-sorted batches, the streamed file classifier
    classifier.py   `utils.Classifier`: the Python API (infer.py runs it)
    predictions.py  the one prediction-file writer and its summary (train.py and infer.py)
    priority.py     background work beside a serving model (a swap's load): its GIL-free steps niced
"""
