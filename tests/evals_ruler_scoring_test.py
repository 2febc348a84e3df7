"""RULER scoring: the reference's cleaning and metrics (with their quirks), aggregation,
effective length, results JSON."""
import json

import pytest

from evals.ruler import scoring


def test_postprocess_strips_and_turns_control_chars_into_newlines():
    assert scoring.postprocess_pred("  \x00abc\tdef\x1f ") == "abc\ndef"
    assert scoring.postprocess_pred("\n\n") == ""
    assert scoring.postprocess_pred("a\x7fb") == "a\x7fb"  # DEL is outside \x00-\x1f


def test_string_match_all_counts_fraction_of_references():
    preds = ["the numbers are 1234567 and 7654321", "only 1234567", ""]
    refs = [["1234567", "7654321"], ["1234567", "7654321"], ["1"]]
    assert scoring.string_match_all(preds, refs) == round((1 + 0.5 + 0) / 3 * 100, 2) == 50.0


def test_string_match_is_case_insensitive_substring_with_false_positives():
    # The reference's substring test: '12' is "found" inside '123'; case is ignored.
    assert scoring.string_match_all(["12345"], [["123"]]) == 100.0
    assert scoring.string_match_part(["ANSWER: Paris"], [["paris", "Lyon"]]) == 100.0
    assert scoring.string_match_part(["Lyon"], [["paris", "lyon"]]) == 100.0
    assert scoring.string_match_part(["Marseille"], [["paris", "lyon"]]) == 0.0


def test_rounding_to_two_decimals():
    assert scoring.string_match_part(["a", "b", "c"], [["a"], ["x"], ["x"]]) == 33.33


def test_score_task_cleans_and_uses_the_task_metric():
    rows = [{"pred": "\x00 VAR ABCDE VAR FGHIJ", "outputs": ["ABCDE", "FGHIJ", "KLMNO"]},
            {"pred": "   ", "outputs": ["ABCDE"]}]
    s = scoring.score_task("vt", rows)
    assert s["metric"] == "string_match_all" and s["score"] == round(2 / 3 / 2 * 100, 2)
    assert s["nulls"] == "1/2"
    assert scoring.score_task("qa_1", [{"pred": "x Paris", "outputs": ["Paris", "Rome"]}])[
        "metric"] == "string_match_part"


def test_empty_prediction_list_is_an_error():
    with pytest.raises(ValueError, match="no predictions"):
        scoring.string_match_all([], [])


def test_length_means_and_weights():
    scores = {4096: {"a": 100.0, "b": 80.0}, 8192: {"a": 90.0, "b": 60.0}}
    assert scoring.length_means(scores) == {4096: 90.0, 8192: 75.0}
    assert scoring.length_means(scores, {"a": 3, "b": 1}) == {4096: 95.0, 8192: 82.5}
    with pytest.raises(ValueError, match="weights sum to zero"):
        scoring.length_means(scores, {"c": 1})


def test_weighted_averages():
    means = {4096: 90.0, 8192: 60.0, 16384: 30.0}
    assert scoring.weighted_average(means, "avg") == 60.0
    assert scoring.weighted_average(means, "inc") == round((90 + 120 + 90) / 6, 2)
    assert scoring.weighted_average(means, "dec") == round((270 + 120 + 30) / 6, 2)


@pytest.mark.parametrize("means,expected", [
    ({4096: 90.0, 8192: 86.0, 16384: 85.0, 32768: 95.0}, 8192),  # leading run only
    ({4096: 85.6, 8192: 99.0}, 0),  # strictly above the threshold
    ({4096: 85.61}, 4096),
    ({8192: 90.0, 4096: 10.0}, 0),  # order of the dict does not matter
    ({}, 0),
])
def test_effective_length(means, expected):
    assert scoring.effective_length(means) == expected


def test_results_document_holds_every_prediction(tmp_path):
    rows = {4096: {"niah_single_1": [{"index": 0, "pred": "1234567", "outputs": ["1234567"]},
                                     {"index": 1, "pred": "", "outputs": ["7"]}]},
            8192: {"niah_single_1": [{"index": 0, "pred": "", "outputs": ["1"]},
                                     {"index": 1, "pred": "", "outputs": ["7"]}]}}
    doc = scoring.build_results("m", {"x": 1}, rows, {"qa_1": "no file"})
    assert doc["scores"] == {"4096": {"niah_single_1": 50.0}, "8192": {"niah_single_1": 0.0}}
    assert doc["summary"]["effective_length"] == 0 and doc["not_run"] == {"qa_1": "no file"}
    assert [p["pred"] for p in doc["tasks"]["4096"]["niah_single_1"]["predictions"]] == [
        "1234567", ""]
    path = tmp_path / "r.json"
    scoring.write_json(str(path), doc)
    assert scoring.load_results(str(path)) == json.loads(path.read_text())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an lctx RULER results"):
        scoring.load_results(str(tmp_path / "bad.json"))
