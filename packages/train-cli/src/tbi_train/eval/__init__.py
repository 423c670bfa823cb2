"""Evaluation: batched greedy generation (seed 000 5.3) and scoring with tbi-evalbench."""

from tbi_train.eval.generate import generate
from tbi_train.eval.predict import predict_file
from tbi_train.eval.score import VAL_METRICS, score_predictions

__all__ = ["VAL_METRICS", "generate", "predict_file", "score_predictions"]
