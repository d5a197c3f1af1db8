"""The annotation tools' formats: Label Studio and doccano in and out of the dataset folder. No Paddle.

label_studio.py          Label Studio's JSON: the labelling config (written and read back), tasks, predictions (pre-annotations)
records.py               what every reader yields (`Record`, `Vote`) and the checks of texts and labels
label_studio_reader.py   Label Studio's JSON and JSON-MIN exports -> records
doccano.py               doccano's JSONL -> records, and its lines as export writes them
splits.py                seeded train/dev/test splits, stratified where the classes allow
importing.py             annotate.py import: task type, conflicts, duplicates, labels, splits, the folder
exporting.py             annotate.py export: texts or labelled splits -> tasks, streamed, pre-annotated
"""
