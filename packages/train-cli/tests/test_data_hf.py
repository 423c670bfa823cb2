"""Local Hugging Face datasets: save_to_disk folders and parquet files with embedded images."""

import io

import datasets
import pytest
from PIL import Image

from tbi_train.data import DataError, load_hf_dataset, open_dataset


def _png(color):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _rows():
    conv = [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]
    return {
        "id": ["a", "b", "c", "d"],
        "image": [
            {"bytes": _png((255, 0, 0)), "path": None},
            {"bytes": _png((0, 0, 255)), "path": None},
            {"bytes": b"not an image", "path": None},
            {"bytes": _png((0, 255, 0)), "path": None},
        ],
        "conversations": [conv, conv, conv, [{"from": "human", "value": "<image>\nColor?"}]],
        "language": ["en", "en", "en", "en"],
    }


@pytest.fixture(scope="module")
def table():
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
            "language": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(_rows(), features=features)


def test_save_to_disk_folder_loads_images_and_counts_bad_rows(table, tmp_path):
    table.save_to_disk(str(tmp_path / "ds"))
    ds = load_hf_dataset(tmp_path / "ds", max_bad_fraction=0.6)
    assert [ds.describe(i).id for i in range(len(ds))] == ["a", "b"]
    assert ds.bad_report.counts == {"corrupt_media": 1, "no_answer": 1}
    assert ds[1].images[0].getpixel((3, 3)) == (0, 0, 255)
    assert ds[0].conversations[1] == {"from": "gpt", "value": "red"}


def test_parquet_files_and_dataset_dict_splits(table, tmp_path):
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    ds = open_dataset(tmp_path / "pq", max_bad_fraction=0.6)
    assert len(ds) == 2 and ds[0].images[0].getpixel((0, 0)) == (255, 0, 0)
    datasets.DatasetDict({"train": table, "validation": table.select([0])}).save_to_disk(str(tmp_path / "dd"))
    val = load_hf_dataset(tmp_path / "dd", split="validation")
    assert len(val) == 1
    with pytest.raises(DataError, match="validation"):
        load_hf_dataset(tmp_path / "dd", split="test")


def test_missing_paths_and_escaping_image_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_hf_dataset(tmp_path / "nowhere")
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "x.png")
    conv = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    plain = datasets.Dataset.from_dict(
        {"id": ["in", "out"], "image": ["x.png", "../x.png"], "conversations": [conv, conv]}
    )
    plain.save_to_disk(str(tmp_path / "paths"))
    ds = load_hf_dataset(tmp_path / "paths", image_root=tmp_path, max_bad_fraction=0.5)
    assert len(ds) == 1 and ds[0].images[0].getpixel((0, 0)) == (9, 9, 9)
    assert ds.bad_report.counts == {"path_outside_root": 1}


def test_list_of_images_column_and_chat_messages(tmp_path):
    features = datasets.Features(
        {
            "images": [datasets.Image()],
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        }
    )
    msgs = [
        {"role": "user", "content": "<image><image> 어느 쪽이 빨간색인가요?"},
        {"role": "assistant", "content": "첫째"},
    ]
    table = datasets.Dataset.from_dict(
        {
            "images": [
                [{"bytes": _png((255, 0, 0)), "path": None}, {"bytes": _png((0, 0, 255)), "path": None}]
            ],
            "messages": [msgs],
        },
        features=features,
    )
    table.to_parquet(str(tmp_path / "one.parquet"))
    ds = load_hf_dataset(tmp_path / "one.parquet")
    sample = ds[0]
    assert [im.getpixel((0, 0)) for im in sample.images] == [(255, 0, 0), (0, 0, 255)]
    assert sample.language == "ko" and sample.id == "one.parquet:0" and sample.answers == ["첫째"]
