"""The reference path: PaddleNLP's few-shot `infer.py` (2.4.x-2.8.x), reproduced for the benchmark.

What it does, as upstream: load the tokenizer and the whole PLM in dynamic graph (only to rebuild
the template), read the exported template config, convert the Paddle static graph to ONNX with
paddle2onnx in every run, build an onnxruntime session, encode every text with the paddlenlp
template, run batches of `--batch_size` (200) in file order through the unfolded graph (LSTM
prompt encoder inside, 7 inputs incl. a 4-D float attention mask), log every prediction.

Changed only where upstream no longer runs on Paddle 3 / paddle2onnx 2 (each marked FIX):
`open(..., "wb", encoding=...)` raises; `template_config.json` has two JSON lines since 2.5;
Paddle 3 writes `model.json` (PIR) and paddle2onnx 2 has `export()` instead of
`command.c_paddle_to_onnx`. Writes the labels to --output_file (upstream only logs them) and
prints `first_prediction_seconds` (process start to the first batch's labels) for the benchmark.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import paddle2onnx
import psutil

from paddlenlp.prompt import AutoTemplate, PromptDataCollatorWithPadding
from paddlenlp.transformers import AutoModelForMaskedLM, AutoTokenizer
from paddlenlp.utils.log import logger

parser = argparse.ArgumentParser()
parser.add_argument("--model_path_prefix", type=str, required=True)
parser.add_argument("--model_name", default="ernie-3.0-base-zh", type=str)
parser.add_argument("--data_file", required=True)
parser.add_argument("--output_file", required=True)
parser.add_argument("--max_length", default=128, type=int)
parser.add_argument("--batch_size", default=200, type=int)
parser.add_argument("--num_threads", default=psutil.cpu_count(logical=False), type=int)
args = parser.parse_args()
PROCESS_START = psutil.Process().create_time()


class InferBackend:
    def __init__(self, model_path_prefix, num_threads=10):
        logger.info(">>> [InferBackend] Creating Engine ...")
        model_file = model_path_prefix + ".json"  # FIX: Paddle 3 (PIR) static graphs
        if not os.path.exists(model_file):
            model_file = model_path_prefix + ".pdmodel"
        infer_model_dir = model_path_prefix.rsplit("/", 1)[0]
        float_onnx_file = os.path.join(infer_model_dir, "model.onnx")
        # FIX: paddle2onnx 2.x API (upstream: command.c_paddle_to_onnx + open(..., "wb", encoding=...))
        paddle2onnx.export(model_file, model_path_prefix + ".pdiparams", float_onnx_file, opset_version=13,
                           enable_onnx_checker=True)
        logger.info(">>> [InferBackend] Use CPU to inference ...")
        sess_options = ort.SessionOptions()
        sess_options.intra_op_num_threads = num_threads
        self.predictor = ort.InferenceSession(float_onnx_file, sess_options=sess_options,
                                              providers=["CPUExecutionProvider"])
        logger.info(">>> [InferBackend] Engine Created ...")

    def infer(self, input_dict):
        return self.predictor.run(None, input_dict)


class MultiClassPredictor:
    def __init__(self, args):
        self.args = args
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_name)
        self.model = AutoModelForMaskedLM.from_pretrained(args.model_name)
        self.template, self.labels, self.input_handles = self.post_init()
        self.collate_fn = PromptDataCollatorWithPadding(self.tokenizer, padding=True, return_tensors="np",
                                                        return_attention_mask=True)
        self.inference_backend = InferBackend(self.args.model_path_prefix, self.args.num_threads)
        self.first_prediction_seconds = None

    def post_init(self):
        export_path = os.path.dirname(self.args.model_path_prefix)
        with open(os.path.join(export_path, "template_config.json"), "r", encoding="utf-8") as fp:
            prompt = json.loads(fp.readline())  # FIX: the file has a second line with the class since 2.5
            template = AutoTemplate.create_from(prompt, self.tokenizer, self.args.max_length, self.model)
        keywords = template.extract_template_keywords(template.prompt)
        inputs = ["input_ids", "token_type_ids", "position_ids", "attention_mask"]
        if "mask" in keywords:
            inputs.append("masked_positions")
        if "soft" in keywords:
            inputs.append("soft_token_ids")
        if "encoder" in keywords:
            inputs.append("encoder_ids")
        with open(os.path.join(export_path, "verbalizer_config.json"), "r", encoding="utf-8") as fp:
            labels = sorted(list(json.load(fp).keys()))
        return template, labels, inputs

    def predict(self, input_data):
        encoded_inputs = self.preprocess(input_data)
        infer_result = self.infer_batch(encoded_inputs)
        result = self.postprocess(infer_result)
        self.printer(result, input_data)
        return result

    def infer_batch(self, inputs):
        num_sample = len(inputs)
        infer_data = None
        num_infer_data = None
        for index in range(0, num_sample, self.args.batch_size):
            left, right = index, index + self.args.batch_size
            batch_dict = self.collate_fn(inputs[left:right])
            input_dict = {}
            for key in self.input_handles:
                value = batch_dict[key]
                if key == "attention_mask":
                    if value.ndim == 2:
                        value = (1 - value[:, np.newaxis, np.newaxis, :]) * -1e4
                    elif value.ndim != 4:
                        raise ValueError("Expect attention mask with ndim=2 or 4, but get ndim={}".format(value.ndim))
                    value = value.astype("float32")
                else:
                    value = value.astype("int64")
                input_dict[key] = value
            results = self.inference_backend.infer(input_dict)
            if self.first_prediction_seconds is None:
                np.argmax(results[0], axis=-1)
                self.first_prediction_seconds = time.time() - PROCESS_START
            if infer_data is None:
                infer_data = [[x] for x in results]
                num_infer_data = len(results)
            else:
                for i in range(num_infer_data):
                    infer_data[i].append(results[i])
        for i in range(num_infer_data):
            infer_data[i] = np.concatenate(infer_data[i], axis=0)
        return infer_data

    def preprocess(self, input_data):
        return [self.template({"text_a": x}) for x in input_data]

    def postprocess(self, infer_data):
        preds = np.argmax(infer_data[0], axis=-1)
        return {"label": [self.labels[x] for x in preds]}

    def printer(self, result, input_data):
        for i, label in enumerate(result["label"]):
            logger.info("input data: {}".format(input_data[i]))
            logger.info("labels: {}".format(label))
            logger.info("-----------------------------")


if __name__ == "__main__":
    predictor = MultiClassPredictor(args)
    with open(args.data_file, "r", encoding="utf-8") as f:
        text_list = [x.strip().split("\t")[0] for x in f.readlines()]
    result = predictor.predict(text_list)
    with open(args.output_file, "w", encoding="utf-8") as f:
        f.write("\n".join(result["label"]) + "\n")
    print(json.dumps({"first_prediction_seconds": round(predictor.first_prediction_seconds, 3),
                      "texts": len(text_list)}))
    sys.stdout.flush()
