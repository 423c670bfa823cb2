"""Video-MME, MVBench and MLVU loaders on small files in each published format, scored as multiple choice."""

import json

import pytest

from tbi_evalbench import EvalbenchError, load_benchmark, mc_accuracy
from tbi_evalbench.loaders import MVBENCH_TASKS


def _json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def _score(samples, predictions):
    return mc_accuracy(predictions, [s.answers[0] for s in samples], [s.choices for s in samples])


_VIDEOMME_ROWS = [
    {
        "video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
        "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
        "task_type": "Counting Problem", "question": "How many red socks are in the video?",
        "options": ["A. 2.", "B. 3.", "C. 4.", "D. 5."], "answer": "C",
    },
    {
        "video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
        "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-2",
        "task_type": "Object Recognition", "question": "What is the man holding?",
        "options": ["A. A cup.", "B. A phone.", "C. A book.", "D. A pen."], "answer": "B",
    },
]  # fmt: skip


def test_videomme_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "videomme" / "test-00000-of-00001.parquet"
    path.parent.mkdir()
    pd.DataFrame(_VIDEOMME_ROWS).to_parquet(path)  # options become numpy arrays, as in the real file
    a, b = load_benchmark("videomme", path, image_root=tmp_path)
    assert (a.id, a.answers, a.metric, a.category, a.benchmark) == (
        "001-1",
        ["C"],
        "mc_accuracy",
        "Counting Problem",
        "videomme",
    )
    assert a.choices == {"A": "2.", "B": "3.", "C": "4.", "D": "5."}
    assert a.frames == [str(tmp_path / "data" / "fFjv93ACGo8.mp4")] and a.image is None
    assert a.meta["duration"] == "short" and a.meta["domain"] == "Knowledge" and a.meta["video_id"] == "001"
    assert a.meta["subtitle"] == str(tmp_path / "subtitle" / "fFjv93ACGo8.srt")
    assert "How many red socks" in a.question and "\nC. 4.\n" in a.question
    result = _score([a, b], ["The answer is C.", "A"])
    assert result.per_sample == [1.0, 0.0] and result.score == 0.5


def test_videomme_json_rows_and_official_nested_form(tmp_path):
    flat = load_benchmark("videomme", _json(tmp_path / "rows.json", _VIDEOMME_ROWS), video_dir="videos")
    assert flat[1].frames == ["videos/fFjv93ACGo8.mp4"] and flat[1].answers == ["B"]
    video_fields = {
        k: v for k, v in _VIDEOMME_ROWS[0].items() if k in ("video_id", "duration", "domain", "videoID")
    }
    questions = [
        {k: r[k] for k in ("question_id", "task_type", "question", "options", "answer")}
        for r in _VIDEOMME_ROWS
    ]
    nested = load_benchmark(
        "videomme", _json(tmp_path / "nested.json", [{**video_fields, "questions": questions}])
    )
    assert [s.id for s in nested] == ["001-1", "001-2"]
    assert [s.choices for s in nested] == [s.choices for s in flat]
    assert nested[0].meta["duration"] == "short" and nested[0].frames == ["data/fFjv93ACGo8.mp4"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": "E"}, "answer 'E' is not one of the options"),
        ({"options": ["2", "3"]}, "does not start with its letter"),
        ({"options": "A. 2"}, "'options' must be a list"),
        ({"videoID": "../../etc/passwd"}, "leaves the data root"),
        ({"videoID": None}, "'videoID' must be a non-empty string"),
    ],
)
def test_videomme_bad_rows(tmp_path, change, message):
    rows = [_VIDEOMME_ROWS[0], {**_VIDEOMME_ROWS[1], **change}]
    with pytest.raises(EvalbenchError, match=message) as err:
        load_benchmark("videomme", _json(tmp_path / "bad.json", rows), image_root=tmp_path)
    assert "row 2" in str(err.value)


def test_videomme_missing_key_names_it(tmp_path):
    row = {k: v for k, v in _VIDEOMME_ROWS[0].items() if k != "videoID"}
    with pytest.raises(EvalbenchError, match="missing key 'videoID'"):
        load_benchmark("videomme", _json(tmp_path / "bad.json", [row]))


def _mvbench_tree(root):
    json_dir = root / "json"
    _json(
        json_dir / "action_sequence.json",
        [
            {
                "video": "ZS9XR.mp4", "question": "What happened after the person took the food?",
                "candidates": ["Ate the medicine.", "Tidied up the blanket.", "Put down the cup/glass/bottle."],
                "answer": "Ate the medicine.", "start": 2.5, "end": 17.3,
            }
        ],
    )  # fmt: skip
    _json(
        json_dir / "action_antonym.json",
        [
            {"video": "166583.webm", "question": "What is the action performed by the person in the video?",
             "candidates": ["Not sure", "Scattering something down", "Piling something up"],
             "answer": "Piling something up"},
            # the notebook keeps the last candidate equal to the answer: two equal texts -> the later letter
            {"video": "7.webm", "question": "Which?", "candidates": ["same", "other", "same"], "answer": "same"},
        ],
    )  # fmt: skip
    _json(
        json_dir / "episodic_reasoning.json",
        [
            {"video": "s04e19_seg02_clip_14", "question": "Why did Sheldon leave?",
             "candidates": ["He was late.", "He was angry.", "He was tired.", "He was bored.", "He was hungry."],
             "answer": "He was angry.", "start": 0.0, "end": 12.0},
        ],
    )  # fmt: skip
    _json(json_dir / "notes.json", {"not": "a task"})  # other files in json/ are not tasks: ignored
    return json_dir


def test_mvbench_folder_and_single_task(tmp_path):
    json_dir = _mvbench_tree(tmp_path)
    video = tmp_path / "video"
    samples = load_benchmark("mvbench", json_dir, image_root=video)
    assert [s.id for s in samples] == [
        "action_antonym-0", "action_antonym-1", "action_sequence-0", "episodic_reasoning-0"
    ]  # fmt: skip
    antonym, dup, seq, episodic = samples
    assert antonym.answers == ["C"] and antonym.choices["C"] == "Piling something up"
    assert dup.answers == ["C"]
    assert (
        antonym.frames == [str(video / "ssv2_video" / "166583.webm")] and antonym.category == "Action Antonym"
    )
    assert seq.meta == {"task": "Action Sequence", "data_type": "video", "start": 2.5, "end": 17.3}
    assert seq.frames == [str(video / "star/Charades_v1_480" / "ZS9XR.mp4")] and seq.answers == ["A"]
    assert (
        episodic.meta["data_type"] == "frame"
        and episodic.answers == ["B"]
        and "E. He was hungry." in episodic.question
    )
    assert episodic.frames == [str(video / "tvqa/frames_fps3_hq" / "s04e19_seg02_clip_14")]
    # MVBench-style answers "(C) text" and free text are understood by the shared letter extraction
    result = _score(samples, ["(C) Piling something up", "A", "Ate the medicine.", "답: B"])
    assert result.per_sample == [1.0, 0.0, 1.0, 1.0]
    (one,) = load_benchmark("mvbench", json_dir / "action_sequence.json")
    assert one.frames == ["star/Charades_v1_480/ZS9XR.mp4"]
    assert len(MVBENCH_TASKS) == 20


def test_mvbench_errors(tmp_path):
    json_dir = tmp_path / "json"
    bad = [{"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "z"}]
    with pytest.raises(
        EvalbenchError, match=r"action_antonym.json\[0\]: answer 'z' is not one of the candidates"
    ):
        load_benchmark("mvbench", _json(json_dir / "action_antonym.json", bad))
    no_bound = [{"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x"}]
    with pytest.raises(EvalbenchError, match="missing key 'start'"):
        load_benchmark("mvbench", _json(json_dir / "action_sequence.json", no_bound))
    text_bound = [
        {"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x", "start": "", "end": 3}
    ]
    with pytest.raises(EvalbenchError, match="'start' and 'end' must be seconds"):
        load_benchmark("mvbench", _json(json_dir / "action_localization.json", text_bound))
    escape = [{"video": "/etc/passwd", "question": "q", "candidates": ["x", "y"], "answer": "x"}]
    with pytest.raises(EvalbenchError, match="'/etc/passwd' leaves the data root"):
        load_benchmark("mvbench", _json(json_dir / "state_change.json", escape), image_root=tmp_path)
    with pytest.raises(EvalbenchError, match="not an MVBench task file; known tasks: action_sequence"):
        load_benchmark("mvbench", _json(tmp_path / "mine.json", no_bound))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalbenchError, match="no MVBench task files"):
        load_benchmark("mvbench", tmp_path / "empty")
    one_option = [{"video": "a.mp4", "question": "q", "candidates": ["x"], "answer": "x"}]
    with pytest.raises(EvalbenchError, match="2 to 8 options"):
        load_benchmark("mvbench", _json(json_dir / "scene_transition.json", one_option))


def test_mlvu_folder_skips_generation_tasks(tmp_path):
    json_dir = tmp_path / "MLVU" / "json"
    _json(
        json_dir / "1_plotQA.json",
        [
            {"video": "movie101_66.mp4", "duration": 246, "question": "What color is the main male character?",
             "candidates": ["Yellow", "Red", "Green", "Blue"], "answer": "Blue", "question_type": "plotQA"},
        ],
    )  # fmt: skip
    _json(
        json_dir / "4_count.json",
        [
            {"video": "count_1.mp4", "duration": 400, "question": "How many times does the man jump?",
             "candidates": ["2", "3", "2", "5"], "answer": "2", "question_type": "count"},
        ],
    )  # fmt: skip
    _json(json_dir / "9_summary.json", [{"video": "s.mp4", "question": "Summarise.", "answer": "long text"}])
    _json(json_dir / "readme_stats.json", {"not": "a task"})  # unnumbered files are not MLVU tasks
    video = tmp_path / "MLVU" / "video"
    plot, count = load_benchmark("mlvu", json_dir, image_root=video)
    assert (plot.id, plot.answers, plot.category, plot.meta["duration"]) == (
        "1_plotQA-0",
        ["D"],
        "plotQA",
        246,
    )
    assert plot.frames == [str(video / "1_plotQA" / "movie101_66.mp4")]
    assert count.answers == ["A"]  # candidates.index: the first equal candidate
    assert _score([plot, count], ["D. Blue", "C"]).per_sample == [1.0, 0.0]
    with pytest.raises(EvalbenchError, match="open-ended generation task"):
        load_benchmark("mlvu", json_dir / "9_summary.json")
    escape = [{"video": "x/../../y.mp4", "question": "q", "candidates": ["a", "b"], "answer": "a"}]
    with pytest.raises(
        EvalbenchError, match=r"5_order.json\[0\]: video path 'x/../../y.mp4' leaves the data root"
    ):
        load_benchmark("mlvu", _json(json_dir / "5_order.json", escape))
    with pytest.raises(EvalbenchError, match="expected a JSON list"):
        load_benchmark("mlvu", _json(json_dir / "6_anomaly_reco.json", {"video": "a"}))
