"""Drives a running Label Studio with label-studio-sdk, as a person would through its UI; run by the
Label Studio environment's Python (.venv-labelstudio, `make install-labelstudio`), never imported
by the tests themselves (the SDK's pins are not paddlenlp's).

Reads one JSON object on stdin: {"url", "token", "title", "label_config", "tasks": [data, ...],
"backend": the ML backend's URL}. Creates the project, imports the tasks, connects the backend
(Label Studio checks it: GET health, POST setup), asks for every task's predictions (the Data
Manager's "Retrieve Predictions" action: POST predict) and prints one JSON line: {"project",
"backend": {"state", "model_version", "error"}, "tasks": [{"id", "data", "predictions": [{"result",
"score", "model_version"}]}]} in task order, or {"connect_error": {"status", "body"}} when Label
Studio refused to connect the backend.
"""
import json
import sys

from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError


def main() -> int:
    args = json.load(sys.stdin)
    client = LabelStudio(base_url=args["url"], api_key=args["token"], timeout=300)
    project = client.projects.create(title=args["title"], label_config=args["label_config"])
    client.projects.import_tasks(project.id, request=[{"data": data} for data in args["tasks"]])
    try:
        backend = client.ml.create(url=args["backend"], project=project.id, title="ptuning", is_interactive=False)
    except ApiError as exc:
        print(json.dumps({"project": project.id, "connect_error": {"status": exc.status_code, "body": exc.body}},
                         ensure_ascii=False, default=str))
        return 0
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
    backend = client.ml.get(backend.id)
    stored = {}
    for prediction in client.predictions.list(project=project.id):
        stored.setdefault(prediction.task, []).append(
            {"result": prediction.result, "score": prediction.score, "model_version": prediction.model_version})
    tasks = sorted(client.tasks.list(project=project.id), key=lambda task: task.id)
    print(json.dumps({"project": project.id,
                      "backend": {"state": str(backend.state), "model_version": backend.model_version,
                                  "error": backend.error_message},
                      "tasks": [{"id": task.id, "data": task.data, "predictions": stored.get(task.id, [])}
                                for task in tasks]}, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
