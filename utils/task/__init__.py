"""What the task type decides, in numbers: from logits to labels, metrics, calibration. numpy only.

    decoding.py      the `Decoder`: activation (softmax or a sigmoid per label), thresholds, the
                     hierarchy, the reject option; the threshold search
    metrics.py       classification metrics (sklearn, or from counts)
    calibration.py   temperature scaling, calibration error, the reject option's coverage table
    windows.py       long texts (--long_text): window spans cut at word starts, head+tail, and the one
                     aggregation of a document's window logits
"""
