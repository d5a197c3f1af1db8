"""utils/task/decoding.py: how logits become labels for each task type, the hierarchy, the threshold search."""
import numpy as np
import pytest

from utils.task.decoding import (ACTIVATIONS, DEFAULT_THRESHOLD, Decoder, ancestors, depth, parent_path,
                                 search_thresholds, sigmoid, softmax)

TREE = ("A", "A##x", "A##x##deep", "A##y", "B", "B##z")


def test_probabilities_are_softmax_for_multi_class_and_a_sigmoid_per_label_otherwise():
    logits = np.array([[2.0, -1.0, 0.0], [800.0, -800.0, 0.0]])
    np.testing.assert_allclose(Decoder("multi-class", ("a", "b", "c")).probabilities(logits), softmax(logits))
    probs = Decoder("multi-label", ("a", "b", "c")).probabilities(logits)
    np.testing.assert_allclose(probs[0], 1 / (1 + np.exp(-logits[0])))
    assert probs[1].tolist() == [1.0, 0.0, 0.5]  # no overflow for large |logits|
    assert np.all(np.isfinite(sigmoid(np.array([-1e4, 1e4]))))


@pytest.mark.parametrize("task_type, activation", [("multi-class", "softmax"), ("multi-label", "sigmoid"),
                                                     ("hierarchical", "sigmoid")])
def test_the_task_type_decides_the_activation_in_one_place_for_numpy_and_paddle(task_type, activation):
    """The Decoder names the activation; numpy (`probabilities`, at any temperature) and the Paddle
    graphs and losses (utils/model/activations.py, what ensembles export) compute the same numbers."""
    import paddle

    from utils.model.activations import activate

    decoder = Decoder(task_type, ("A", "A##x", "B"), temperature=2.0)
    assert decoder.activation == activation
    logits = np.array([[2.0, -1.0, 0.0], [30.0, -30.0, 0.5]])
    np.testing.assert_allclose(decoder.probabilities(logits), ACTIVATIONS[activation](logits / 2.0))
    np.testing.assert_allclose(decoder.probabilities(logits, temperature=1.0), ACTIVATIONS[activation](logits))
    graph = activate(paddle.to_tensor(logits, dtype="float32"), decoder.activation).numpy()
    np.testing.assert_allclose(graph, decoder.probabilities(logits, temperature=1.0), rtol=1e-5, atol=1e-7)


def test_confidence_is_the_top_probability_or_the_least_sure_label():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    assert Decoder("multi-class", ("a", "b", "c")).confidence(probs).tolist() == [0.7, 0.4]
    label_sets = np.array([[0.9, 0.05, 0.6], [0.99, 0.01, 0.02]])
    assert Decoder("multi-label", ("a", "b", "c")).confidence(label_sets).tolist() == pytest.approx([0.6, 0.98])


def test_multi_class_decides_the_best_label_only():
    decided = Decoder("multi-class", ("a", "b", "c")).decide(np.array([[0.2, 0.5, 0.3]]))
    assert decided.tolist() == [[False, True, False]]


def test_multi_label_predicts_every_label_above_its_threshold():
    decoder = Decoder("multi-label", ("a", "b", "c"))
    assert decoder.thresholds == (DEFAULT_THRESHOLD,) * 3
    probs = np.array([[0.9, 0.5, 0.51], [0.1, 0.2, 0.3]])
    assert decoder.decide(probs).tolist() == [[True, False, True], [False, False, False]]  # strictly above, as upstream
    per_label = Decoder("multi-label", ("a", "b", "c"), (0.95, 0.4, 0.6))
    assert per_label.decide(probs).tolist() == [[False, True, False], [False, False, False]]
    assert decoder.decide(probs, thresholds=0.15).tolist() == [[True, True, True], [False, True, True]]


def test_label_paths():
    assert parent_path("A##x##deep") == "A##x" and parent_path("A") is None
    assert ancestors("A##x##deep") == ["A##x", "A"] and depth("A##x##deep") == 3
    decoder = Decoder("hierarchical", TREE)
    assert decoder.parents == [-1, 0, 1, 0, -1, 4]
    assert decoder.levels == [1, 2, 3, 2, 1, 2]
    assert Decoder("multi-label", TREE).parents == [-1] * 6  # flat multi-label has no hierarchy


def test_consistent_decoding_predicts_a_child_only_with_its_parent():
    probs = np.array([
        [0.4, 0.9, 0.9, 0.1, 0.6, 0.7],   # A below threshold: its whole subtree goes; B and B##z stay
        [0.8, 0.3, 0.9, 0.7, 0.2, 0.9],   # A##x below: A##x##deep goes; B below: B##z goes
    ])
    consistent = Decoder("hierarchical", TREE).decide(probs)
    assert consistent.tolist() == [[False, False, False, False, True, True],
                                   [True, False, False, True, False, False]]
    flat = Decoder("hierarchical", TREE, consistent=False).decide(probs)  # upstream: every label on its own
    assert flat.tolist() == (probs > 0.5).tolist()
    for row in consistent:  # the guarantee itself
        for child, parent in enumerate(Decoder("hierarchical", TREE).parents):
            assert not (row[child] and parent >= 0 and not row[parent])


def test_manifest_round_trip_and_exports_before_task_types_are_multi_class():
    decoder = Decoder("hierarchical", TREE, (0.3,) * 6, consistent=False)
    described = decoder.describe()
    assert described == {"task_type": "hierarchical", "thresholds": [0.3] * 6, "hierarchical_decoding": "flat",
                         "temperature": 1.0, "reject_threshold": None, "other_label": "other"}
    assert Decoder.from_manifest(described, TREE) == decoder
    assert Decoder.from_manifest({}, ("a", "b")).task_type == "multi-class"
    with pytest.raises(ValueError, match="thresholds"):
        Decoder.from_manifest({"task_type": "multi-label", "thresholds": [0.5]}, ("a", "b"))
    with pytest.raises(ValueError, match="task_type"):
        Decoder.from_manifest({"task_type": "multilabel!"}, ("a", "b"))


def test_global_search_maximises_micro_f1_of_the_decoded_labels():
    gold = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    probs = np.array([[0.30, 0.10], [0.20, 0.35], [0.40, 0.32], [0.05, 0.15]])  # every positive in (0.2, 0.41]
    thresholds = search_thresholds(Decoder("multi-label", ("a", "b")), probs, gold, "global")
    assert len(set(thresholds)) == 1
    assert Decoder("multi-label", ("a", "b"), thresholds).decide(probs).tolist() == gold.tolist()
    assert 0.15 <= thresholds[0] < 0.30


def test_per_label_search_tunes_each_label_and_keeps_the_default_without_dev_examples():
    gold = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    probs = np.array([[0.9, 0.2, 0.9], [0.8, 0.25, 0.9], [0.95, 0.1, 0.9], [0.1, 0.05, 0.9]])
    thresholds = search_thresholds(Decoder("multi-label", ("a", "b", "c")), probs, gold, "per-label")
    assert 0.8 <= thresholds[0] < 0.9       # a: above 0.8 (the negative at 0.8), below 0.9
    assert 0.1 <= thresholds[1] < 0.25      # b: its one positive at 0.25
    assert thresholds[2] == DEFAULT_THRESHOLD  # c: no dev example carries it
    assert search_thresholds(Decoder("multi-label", ("a", "b", "c")), probs, gold, "per-label", default=0.7)[2] == 0.7


def test_ties_go_to_the_threshold_nearest_the_default():
    gold = np.array([[1], [0]], dtype=bool)
    probs = np.array([[0.99], [0.01]])  # every threshold in [0.01, 0.99) separates them
    assert search_thresholds(Decoder("multi-label", ("a",)), probs, gold, "global") == (0.5,)
    assert search_thresholds(Decoder("multi-label", ("a",)), probs, gold, "per-label") == (0.5,)


def test_a_decoder_needs_one_threshold_per_label():
    with pytest.raises(ValueError, match="1 thresholds for 2 labels"):
        Decoder("multi-label", ("a", "b"), (0.5,))
    assert Decoder("multi-class", ("a", "b"), (0.5, 0.5)).thresholds is None


def test_evaluation_during_training_with_a_search_scores_the_tuned_thresholds():
    """At 0.5 a sparse-output model scores 0 at every evaluation (the first would be kept as the best);
    with --threshold_search each evaluation is scored at thresholds tuned on dev, as the final model is."""
    from utils.task.metrics import task_metrics

    decoder = Decoder("multi-label", ("a", "b"))
    gold = np.array([[1, 0], [0, 1], [0, 0]])
    logits = np.log(np.array([[0.3, 0.1], [0.1, 0.2], [0.05, 0.05]]) / (1 - np.array([[0.3, 0.1], [0.1, 0.2],
                                                                                       [0.05, 0.05]])))
    assert task_metrics(decoder, logits, gold)["micro_f1"] == 0.0
    assert task_metrics(decoder, logits, gold, search="global")["micro_f1"] == 1.0
    assert task_metrics(decoder, logits, gold, search="per-label")["macro_f1"] == 1.0
