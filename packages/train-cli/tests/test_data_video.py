"""Video: uniform frame sampling from PyAV files and frame folders, image replication, bad videos."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from tbi_train.data import load_conversations, read_frame_folder, read_video, uniform_indices


def _write_video(path, n_frames, size=32):
    """Frame t is a flat grey of level 8 * t, so the decoded level tells which frame was picked."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for t in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 8 * t, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _level(img):
    return float(np.asarray(img, dtype=float).mean())


@pytest.mark.parametrize(("total", "n"), [(30, 8), (8, 8), (5, 8), (101, 7), (1, 3), (9, 1)])
def test_uniform_indices_match_the_formula(total, n):
    got = uniform_indices(total, n)
    expected = (
        [(total - 1) // 2] if n == 1 else [int(np.floor(i * (total - 1) / (n - 1) + 0.5)) for i in range(n)]
    )
    assert got == expected
    assert len(got) == n and got == sorted(got)
    if n > 1:
        assert got[0] == 0 and got[-1] == total - 1


def test_read_video_picks_the_uniformly_spaced_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, 25)
    frames = read_video(str(path), 8)
    assert len(frames) == 8 and frames[0].size == (32, 32) and frames[0].mode == "RGB"
    levels = [_level(f) for f in frames]
    expected = [8 * i for i in uniform_indices(25, 8)]
    assert np.allclose(levels, expected, atol=3.0), (levels, expected)


def test_frame_folder_uses_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(12):
        Image.new("RGB", (8, 8), (10 * t, 0, 0)).save(folder / f"f{t}.png")
    frames = read_frame_folder(str(folder), 4)
    assert [f.getpixel((0, 0))[0] for f in frames] == [0, 40, 70, 110]


def test_dataset_with_video_files_frame_folders_and_bad_videos(tmp_path):
    _write_video(tmp_path / "good.mp4", 10)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 200)
    folder = tmp_path / "clip"
    folder.mkdir()
    for t in range(3):
        Image.new("RGB", (8, 8), (0, 50 * t, 0)).save(folder / f"{t:02d}.png")
    (tmp_path / "empty").mkdir()
    conv = [
        {"from": "human", "value": "<image>\n영상을 설명하세요."},
        {"from": "gpt", "value": "회색 화면입니다."},
    ]
    records = [
        {"id": "file", "video": "good.mp4", "conversations": conv},
        {"id": "folder", "video": "clip/", "conversations": conv},
        {"id": "broken", "video": "bad.mp4", "conversations": conv},
        {"id": "empty", "video": "empty/", "conversations": conv},
        {"id": "absent", "video": "absent.mp4", "conversations": conv},
    ]
    (tmp_path / "v.json").write_text(json.dumps(records, ensure_ascii=False))
    ds = load_conversations(tmp_path / "v.json", num_frames=4, max_bad_fraction=0.7)
    assert [ds.describe(i).id for i in range(len(ds))] == ["file", "folder"]
    assert ds.bad_report.counts == {"corrupt_media": 1, "missing_media": 2}
    video = ds[0]
    assert len(video.images) == 4 and video.meta["media_frames"] == [4] and video.meta["modality"] == "video"
    assert np.allclose([_level(f) for f in video.images], [8 * i for i in uniform_indices(10, 4)], atol=3.0)
    folder_sample = ds[1]
    assert [f.getpixel((0, 0))[1] for f in folder_sample.images] == [0, 50, 50, 100]
    assert ds.describe(1).language == "ko"
