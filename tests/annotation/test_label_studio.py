"""Label Studio's formats as this tool writes them (utils/annotation/label_studio.py)."""
import xml.etree.ElementTree as ET

from utils.annotation import label_studio as ls
from utils.deploy.classifier import LabelSetPrediction, Prediction


def test_the_config_of_each_task_type_names_every_label_once_under_its_control():
    single = ET.fromstring(ls.labeling_config(["体育", "a&b \"x\""]))
    choices = single.find("Choices")
    assert choices.get("name") == ls.CONTROL and choices.get("toName") == ls.TEXT
    assert choices.get("choice") == "single"
    assert [c.get("value") for c in choices] == ["体育", "a&b \"x\""]   # escaped in XML, exact when parsed
    assert ET.fromstring(ls.labeling_config(["a", "b"], "multi-label")).find("Choices").get("choice") == "multiple"
    pair = ET.fromstring(ls.labeling_config(["a"], pair=True))
    assert [t.get("value") for t in pair.findall("Text")] == ["$text", "$text_b"]


def test_a_hierarchical_config_nests_each_label_under_its_parent():
    tree = ET.fromstring(ls.labeling_config(["科技", "科技##手机", "科技##手机##5G", "体育"], "hierarchical"))
    taxonomy = tree.find("Taxonomy")
    top = {c.get("value"): c for c in taxonomy}
    assert set(top) == {"科技", "体育"}
    phone = top["科技"].find("Choice")
    assert phone.get("value") == "手机" and phone.find("Choice").get("value") == "5G"


def test_a_label_set_prediction_lists_only_the_most_specific_paths_and_its_least_sure_label():
    pred = LabelSetPrediction(labels=[("科技", 0.9), ("科技##手机", 0.7), ("体育", 0.6)],
                              top_k=[("科技", 0.9)])
    out = ls.prediction(pred, "hierarchical", model_version="v1")
    assert out["result"][0]["value"] == {"taxonomy": [["科技", "手机"], ["体育"]]}
    assert out["result"][0]["type"] == "taxonomy" and out["score"] == 0.6 and out["model_version"] == "v1"
    multi = ls.prediction(pred, "multi-label")
    assert multi["result"][0]["value"] == {"choices": ["科技", "科技##手机", "体育"]}


def test_a_multi_class_prediction_scores_with_its_confidence_and_no_labels_give_an_empty_result():
    out = ls.prediction(Prediction("体育", 0.8125, [("体育", 0.8125)]))
    assert out["result"] == [{"from_name": "label", "to_name": "text", "type": "choices",
                              "value": {"choices": ["体育"]}}]
    assert out["score"] == 0.8125
    none = ls.prediction(LabelSetPrediction(labels=[], top_k=[("a", 0.25)]), "multi-label")
    assert none["result"] == [] and none["score"] == 0.75


def test_a_task_keeps_pairs_apart_and_never_lets_meta_replace_the_text():
    task = ls.task(("甲", "乙"), meta={"text": "other", "line": 3})
    assert task == {"data": {"text": "甲", "text_b": "乙", "line": 3}}
    assert "predictions" not in ls.task("x")


def test_a_config_read_back_gives_each_controls_names_labels_and_text_keys():
    """read_labeling_config: what the ML backend needs from a project's config, for every config this
    tool writes, and the config's own names (alias over value; a Taxonomy's paths, ancestors included)."""
    for task_type in ("multi-class", "multi-label", "hierarchical"):
        labels = ["体育", "科技", "科技##手机"]
        (control,) = ls.read_labeling_config(ls.labeling_config(labels, task_type, pair=True))
        assert (control.name, control.to_name, control.text_keys) == (ls.CONTROL, ls.TEXT, (ls.TEXT, ls.TEXT_B))
        assert sorted(control.labels) == sorted(labels) and control.multiple == (task_type != "multi-class")
        assert control.kind == ("taxonomy" if task_type == "hierarchical" else "choices")
    (control,) = ls.read_labeling_config(
        '<View><Text name="b" value="$second"/><Text name="a" value="$first"/>'
        '<choices name="c" toName="a" choice="multiple"><Choice value="x" alias="y"/><Choice value="z"/></choices></View>')
    assert (control.to_name, control.text_keys, control.labels) == ("a", ("first", "second"), ("y", "z"))


def test_a_config_the_backend_cannot_use_is_a_config_error_saying_why():
    bad = {"<View": "not well-formed", '<!DOCTYPE v [<!ENTITY e "x">]><View/>': "DTD",
           '<View><Text name="t" value="$t"/></View>': "no <Choices> or <Taxonomy>",
           '<View><Image name="i" value="$i"/><Choices name="c" toName="i"/></View>': "not a <Text>",
           '<View><Text name="t" value="hello"/><Choices name="c" toName="t"/></View>': "task field",
           '<View><Text name="t" value="$t"/><Choices name="c" toName="t" value="$opts"/></View>': "from the task"}
    for config, reason in bad.items():
        try:
            ls.read_labeling_config(config)
        except ls.ConfigError as exc:
            assert reason in str(exc), (config, str(exc))
        else:
            raise AssertionError(f"accepted: {config}")
