"""Phased training through accelerate: freezing, per-component rates, schedules, checkpoints, resume, logs."""

from tbi_train.train.checkpoint import CheckpointState, latest_checkpoint, read_checkpoint, save_checkpoint
from tbi_train.train.log import JsonlLog, plot_curves
from tbi_train.train.loss import IGNORE_INDEX, count_targets, token_loss_sum
from tbi_train.train.optim import build_optimizer, build_scheduler, set_trainable
from tbi_train.train.order import DataOrder
from tbi_train.train.run import RunResult, TrainCallback, train

__all__ = [
    "IGNORE_INDEX",
    "CheckpointState",
    "DataOrder",
    "JsonlLog",
    "RunResult",
    "TrainCallback",
    "build_optimizer",
    "build_scheduler",
    "count_targets",
    "latest_checkpoint",
    "plot_curves",
    "read_checkpoint",
    "save_checkpoint",
    "set_trainable",
    "token_loss_sum",
    "train",
]
