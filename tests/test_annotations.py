"""lofi.data.annotations: ActivityNet/HACS, THUMOS14-style and Kinetics-style clip lists → one record list."""
import json
import warnings

import pytest

from lofi.data.annotations import AnnotationError, Segment, SegmentWarning, clip_segments, load_annotations


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def anet(database):
    return {"version": "VERSION 1.3", "taxonomy": [], "database": database}


def test_activitynet_real_ground_truth(shared_data):
    path = shared_data / "activitynet" / "activity_net_v1-3_gt.json"
    raw = json.loads(path.read_text())["database"]
    ann = load_annotations(path, "activitynet")
    assert len(ann.records) == len(raw) == 19228
    assert len(ann.classes) == 200 and ann.classes == sorted(ann.classes)
    assert {c: i for i, c in enumerate(ann.classes)} == ann.label_ids
    subsets = {}
    for r in ann.records:
        subsets[r.subset] = subsets.get(r.subset, 0) + 1
        assert r.video == r.id
        entry = raw[r.id]
        assert r.duration == entry["duration"]
        assert [(s.start, s.end, s.label) for s in r.annotations] == \
            [(a["segment"][0], a["segment"][1], a["label"]) for a in entry["annotations"]]
    assert subsets == {"training": 9649, "validation": 4728, "testing": 4851}
    assert all(not r.annotations for r in ann.records if r.subset == "testing")
    assert {s.label for r in ann.records for s in r.annotations} == set(ann.classes)


def test_activitynet_ids_are_verbatim(tmp_path):
    # real ActivityNet ids are YouTube ids; some begin with "v_" themselves (e.g. "v_UmAH95xls")
    path = write_json(tmp_path / "a.json", anet({"v_UmAH95xls": {"subset": "training", "duration": 3.0, "annotations": [
        {"segment": [0.5, 1], "label": "x"}]}}))
    (record,) = load_annotations(path).records
    assert record.id == record.video == "v_UmAH95xls"
    assert record.annotations == (Segment(0.5, 1.0, "x"),)


@pytest.mark.parametrize("entry, words", [
    ({"duration": 3, "annotations": []}, ["'subset'"]),
    ({"subset": "training", "duration": "long", "annotations": []}, ["'duration'"]),
    ({"subset": "training", "annotations": {"segment": [0, 1]}}, ["'annotations'"]),
    ({"subset": "training", "annotations": [{"label": "x"}]}, ["annotations[0].segment"]),
    ({"subset": "training", "annotations": [{"segment": [0, 1, 2], "label": "x"}]}, ["annotations[0].segment"]),
    ({"subset": "training", "annotations": [{"segment": [0, 1], "label": "x"}, {"segment": [0, "b"], "label": "y"}]},
     ["annotations[1].segment[1]", "'b'"]),
    ({"subset": "training", "annotations": [{"segment": [0, float("nan")], "label": "x"}]}, ["segment[1]"]),
    ({"subset": "training", "annotations": [{"segment": [0, 1], "label": 7}]}, ["annotations[0].label"]),
])
def test_malformed_activitynet_names_video_and_field(tmp_path, entry, words):
    path = write_json(tmp_path / "bad.json", anet({"good": {"subset": "training", "annotations": []}, "vid42": entry}))
    with pytest.raises(AnnotationError) as info:
        load_annotations(path)
    message = str(info.value)
    assert "vid42" in message and str(path) in message
    for word in words:
        assert word in message


def test_not_json_and_no_database(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_annotations(bad)
    with pytest.raises(AnnotationError, match="'database'"):
        load_annotations(write_json(tmp_path / "x.json", {"videos": {}}))
    with pytest.raises(ValueError, match="unknown annotation format"):
        load_annotations(bad, "kinetics")
    with pytest.raises(FileNotFoundError):
        load_annotations(tmp_path / "absent.json")


def test_thumos_style(tmp_path):
    database = {
        "video_validation_0000051": {"subset": "Validation", "duration": 169.8, "fps": 30.0, "annotations": [
            {"label": "Diving", "segment": [10.5, 12.0], "label_id": 1},
            {"label": "Ambiguous", "segment": [13.0, 14.0]},
            {"label": "BaseballPitch", "segment(frames)": [450, 510], "label_id": 0}]},
        "video_test_0000004": {"subset": "Test", "duration": 33.0, "fps": 30.0, "annotations": [
            {"label": "Diving", "segment": [1.0, 2.0], "label_id": 1}]},
    }
    ann = load_annotations(write_json(tmp_path / "thumos.json", {"database": database}), "thumos")
    assert ann.classes == ["BaseballPitch", "Diving"]  # the file's label_id order, Ambiguous dropped
    val = {r.id: r for r in ann.records}["video_validation_0000051"]
    assert val.subset == "validation" and val.duration == 169.8
    assert val.annotations == (Segment(10.5, 12.0, "Diving"), Segment(15.0, 17.0, "BaseballPitch"))
    assert {r.subset for r in ann.records} == {"validation", "test"}


def test_thumos_inconsistent_label_id(tmp_path):
    database = {"v1": {"subset": "Test", "annotations": [{"label": "A", "segment": [0, 1], "label_id": 0}]},
                "v2": {"subset": "Test", "annotations": [{"label": "A", "segment": [0, 1], "label_id": 3}]}}
    with pytest.raises(AnnotationError, match=r"'v2'.*label_id"):
        load_annotations(write_json(tmp_path / "t.json", {"database": database}), "thumos")


def test_clip_list_csv_with_kinetics_names(tmp_path):
    path = tmp_path / "clips.csv"
    path.write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                    "abseiling,---QUuC4vJs,3,13,train,0\n"
                    "air drumming,--nQbRBEz2s,104,114,val,0\n"
                    "zumba,whole,,,test,0\n")
    ann = load_annotations(path, "clips")
    assert ann.classes == ["abseiling", "air drumming", "zumba"]
    a, b, c = ann.records
    assert (a.id, a.video, a.subset, a.clip, a.label) == ("---QUuC4vJs_000003_000013", "---QUuC4vJs", "training",
                                                          (3.0, 13.0), "abseiling")
    assert (b.subset, b.clip) == ("validation", (104.0, 114.0))
    assert (c.id, c.clip, c.subset) == ("whole", None, "testing")


def test_clip_list_json_and_errors(tmp_path):
    clips = [{"video": "a", "start": 0, "end": 2.5, "label": "x", "split": "train"}]
    (record,) = load_annotations(write_json(tmp_path / "c.json", {"clips": clips}), "clips").records
    assert record.clip == (0.0, 2.5)
    cases = [({"video": "a", "start": 0, "end": 2, "label": "x", "split": "dev"}, "'split'"),
             ({"video": "a", "start": 3, "end": 2, "label": "x", "split": "train"}, "'start'/'end'"),
             ({"video": "a", "start": 1, "label": "x", "split": "train"}, "'start' and 'end'"),
             ({"video": "a", "start": "soon", "end": 2, "label": "x", "split": "train"}, "'start'"),
             ({"video": "a", "start": 0, "end": 2, "split": "train"}, "'label'")]
    for n, (row, field) in enumerate(cases):
        with pytest.raises(AnnotationError) as info:
            load_annotations(write_json(tmp_path / f"bad{n}.json", [row]), "clips")
        assert "'a'" in str(info.value) and field in str(info.value)
    with pytest.raises(AnnotationError, match="duplicate clip id"):
        load_annotations(write_json(tmp_path / "dup.json", clips * 2), "clips")


def test_clip_segments_clips_and_drops_with_warnings():
    segments = [Segment(-1.0, 2.0, "a"), Segment(1.0, 3.0, "b"), Segment(4.0, 12.0, "c"), Segment(5.0, 5.0, "d"),
                Segment(11.0, 12.0, "e"), Segment(3.0, 2.0, "f")]
    with pytest.warns(SegmentWarning) as record:
        kept, messages = clip_segments(segments, 10.0, "vid7")
    assert kept == [Segment(0.0, 2.0, "a"), Segment(1.0, 3.0, "b"), Segment(4.0, 10.0, "c")]
    assert len(messages) == len(record) == 5
    assert all("vid7" in m for m in messages)
    assert sum("clipped" in m for m in messages) == 2 and sum("dropped" in m for m in messages) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clip_segments(segments[1:2], 10.0, "v") == ([segments[1]], [])


def test_fixed_class_index(tmp_path):
    database = {"a": {"subset": "training", "annotations": [{"segment": [0, 1], "label": "run"}]}}
    path = write_json(tmp_path / "a.json", {"classes": ["walk", "run", "jump"], "database": database})
    assert load_annotations(path).classes == ["walk", "run", "jump"]
    assert load_annotations(path, classes=["run", "x"]).label_ids == {"run": 0, "x": 1}
    with pytest.raises(AnnotationError, match=r"'a'.*'run' is not in the given class list"):
        load_annotations(path, classes=["walk"])
    bad = write_json(tmp_path / "b.json", {"classes": ["walk", "walk", "run"], "database": database})
    with pytest.raises(AnnotationError, match="repeats"):
        load_annotations(bad)
    clips = tmp_path / "c.csv"
    clips.write_text("video,start,end,label,split\nv,0,1,jump,train\n")
    assert load_annotations(clips, "clips", classes=["walk", "run", "jump"]).label_ids["jump"] == 2
