"""Phased training through accelerate: freezing, per-component rates, schedules, checkpoints, resume, logs."""

from tbi_train.train.checkpoint import CheckpointState, latest_checkpoint, read_checkpoint, save_checkpoint
from tbi_train.train.log import JsonlLog, RunLog, plot_curves
from tbi_train.train.loss import IGNORE_INDEX, count_targets, token_loss_sum
from tbi_train.train.optim import build_optimizer, build_scheduler, set_trainable
from tbi_train.train.order import DataOrder
from tbi_train.train.run import RunResult, TrainCallback, train
from tbi_train.train.sinks import SINKS, TensorBoardSink, WandbSink, check_sinks, scalars

__all__ = [
    "IGNORE_INDEX",
    "SINKS",
    "CheckpointState",
    "DataOrder",
    "JsonlLog",
    "RunLog",
    "RunResult",
    "TensorBoardSink",
    "TrainCallback",
    "WandbSink",
    "build_optimizer",
    "build_scheduler",
    "check_sinks",
    "count_targets",
    "latest_checkpoint",
    "plot_curves",
    "read_checkpoint",
    "save_checkpoint",
    "scalars",
    "set_trainable",
    "token_loss_sum",
    "train",
]
