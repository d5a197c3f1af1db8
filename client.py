"""Send texts to serve.py in PaddleNLP SimpleServing's format and print the answers (JSON lines).

    python client.py --url http://127.0.0.1:8189/models/cls_default --text 央行宣布降准 --text 球队夺得冠军
    python client.py --url http://127.0.0.1:8189/models/cls_default --input_file texts.txt --batch_size 32

The request body is SimpleServing's: {"data": {"text": [...], "text_pair": [...]}, "parameters":
{"max_seq_len": ..., "batch_size": ..., "prob_limit": ..., "top_k": ...}}. Standard library only.
"""
import json
import sys
import urllib.error
import urllib.request

from utils.errors import UserError, run_cli
from utils.files import read_text_lines


def post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:  # the service's JSON error names the field
        detail = exc.read().decode("utf-8", "replace")
        raise UserError(f"HTTP {exc.code}: {detail}", url) from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot reach the service: {getattr(exc, 'reason', exc)}", url) from None


def main(argv):
    from utils.flags.parser import parse_flags
    from utils.flags.runtime import ClientArguments

    (args,) = parse_flags(ClientArguments, argv, "client.py", __doc__)
    lines = list(args.text) + ([line for _, line in read_text_lines(args.input_file, "input file")]
                               if args.input_file else [])
    if not lines:
        raise UserError("has no texts: one text per line", args.input_file)
    for start in range(0, len(lines), args.batch_size):
        chunk = [line.split("\t") for line in lines[start:start + args.batch_size]]
        data = {"text": [fields[0] for fields in chunk]}
        if all(len(fields) == 2 for fields in chunk):
            data["text_pair"] = [fields[1] for fields in chunk]
        parameters = {"batch_size": args.batch_size, "top_k": args.top_k}
        if args.max_seq_len:
            parameters["max_seq_len"] = args.max_seq_len
        if args.prob_limit is not None:
            parameters["prob_limit"] = args.prob_limit
        result = post(args.url, {"data": data, "parameters": parameters}, args.timeout)["result"]
        for fields, answer in zip(chunk, result):
            print(json.dumps({"text": "\t".join(fields), **answer}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
