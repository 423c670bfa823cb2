"""Training data: LLaVA-style conversations, local HF datasets, video frames, mixtures, collation, checks.

ds = load_conversations("data/train.json", num_frames=8)          # bad samples skipped + counted
mix = MixtureDataset(split_by(ds, "language"), {"ko": 0.4, "en": 0.6}, seed=0)
collator = Collator(tokenizer, image_transform, tokens_per_image=64, loss_on="answers")
preflight_check(mix, collator)                                     # stops a zero-loss run early
"""

from tbi_train.data.bad import REASONS, BadSampleReport
from tbi_train.data.check import DatasetCheckReport, check_dataset, open_dataset
from tbi_train.data.collator import IGNORE_INDEX, IMAGE_PAD_TOKEN, Collator, Encoded
from tbi_train.data.dataset import ConversationDataset, load_conversations
from tbi_train.data.errors import DataError
from tbi_train.data.hf import load_hf_dataset
from tbi_train.data.media import read_frame_folder, read_video, uniform_indices
from tbi_train.data.mixture import MixtureDataset, split_by, train_val_split
from tbi_train.data.preflight import PreflightReport, preflight_check
from tbi_train.data.sample import IMAGE_PLACEHOLDER, Sample, SampleInfo

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PAD_TOKEN",
    "IMAGE_PLACEHOLDER",
    "REASONS",
    "BadSampleReport",
    "Collator",
    "ConversationDataset",
    "DataError",
    "DatasetCheckReport",
    "Encoded",
    "MixtureDataset",
    "PreflightReport",
    "Sample",
    "SampleInfo",
    "check_dataset",
    "load_conversations",
    "load_hf_dataset",
    "open_dataset",
    "preflight_check",
    "read_frame_folder",
    "read_video",
    "split_by",
    "train_val_split",
    "uniform_indices",
]
