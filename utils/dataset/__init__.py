"""The dataset folder as the user wrote it, read strictly (errors name file:line); no Paddle.

    folder.py   train/dev/test/data.txt: `DatasetDir`, what each --do_* step needs
    labels.py   label.txt: the label set, label words, hierarchical paths; a data line's label column
    inputs.py   infer.py's input files, streamed in chunks (memory does not grow with the file)
"""
