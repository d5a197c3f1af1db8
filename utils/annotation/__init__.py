"""The annotation tools' formats: Label Studio and doccano in and out of the dataset folder. No Paddle.

label_studio.py   Label Studio's JSON: the labelling config (written and read back), tasks, predictions (pre-annotations)
"""
