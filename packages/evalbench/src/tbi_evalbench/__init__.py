"""Scorers matching the official VLM benchmark scripts, benchmark loaders, statistics across seeds and reports. No torch.

BERTScore (which needs a model, hence torch) lives in :mod:`tbi_evalbench.bertscore`, imported on first use.
"""

__version__ = "0.1.0"

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.aggregate import DEFAULT_GROUPS, aggregate_scores
from tbi_evalbench.anls import anls, anls_score
from tbi_evalbench.bleu import bleu
from tbi_evalbench.choice import build_mc_prompt, circular_accuracy, extract_choice, mc_accuracy
from tbi_evalbench.cider import cider
from tbi_evalbench.efficiency import efficiency_table, pareto_frontier, plot_token_frontier
from tbi_evalbench.exact import exact_match, token_f1
from tbi_evalbench.gallery import ErrorGallery, SampleResult, error_gallery, write_error_gallery
from tbi_evalbench.loaders import BENCHMARKS, Sample, load_benchmark
from tbi_evalbench.mathvista import mathvista_score
from tbi_evalbench.meteor import meteor
from tbi_evalbench.metrics import METRIC_NAMES, score_metric
from tbi_evalbench.ocrbench import ocrbench
from tbi_evalbench.relaxed import relaxed_accuracy, relaxed_correctness
from tbi_evalbench.report import plot_ablation_heatmap, plot_radar, plot_training_curves, results_table
from tbi_evalbench.result import ScoreResult
from tbi_evalbench.stats import (
    bonferroni,
    bootstrap_ci,
    clustered_se,
    holm,
    interaction_contrast,
    mean_std,
    paired_bootstrap,
    paired_ttest,
    t_confidence_interval,
)
from tbi_evalbench.text import Tokenizer
from tbi_evalbench.vqa import vqa_accuracy, vqa_score


def __getattr__(name: str):
    # BERTScore pulls in torch; keep it out of `import tbi_evalbench` and load it only when asked for.
    if name == "bertscore":
        from tbi_evalbench.bertscore import bertscore

        return bertscore
    raise AttributeError(f"module 'tbi_evalbench' has no attribute {name!r}")


__all__ = [
    "BENCHMARKS",
    "DEFAULT_GROUPS",
    "METRIC_NAMES",
    "ErrorGallery",
    "EvalbenchError",
    "Sample",
    "SampleResult",
    "ScoreResult",
    "Tokenizer",
    "aggregate_scores",
    "anls",
    "anls_score",
    "bertscore",
    "bleu",
    "bonferroni",
    "bootstrap_ci",
    "build_mc_prompt",
    "cider",
    "circular_accuracy",
    "clustered_se",
    "efficiency_table",
    "error_gallery",
    "exact_match",
    "extract_choice",
    "holm",
    "interaction_contrast",
    "load_benchmark",
    "mathvista_score",
    "mc_accuracy",
    "mean_std",
    "meteor",
    "ocrbench",
    "paired_bootstrap",
    "paired_ttest",
    "pareto_frontier",
    "plot_ablation_heatmap",
    "plot_radar",
    "plot_token_frontier",
    "plot_training_curves",
    "relaxed_accuracy",
    "relaxed_correctness",
    "results_table",
    "score_metric",
    "t_confidence_interval",
    "token_f1",
    "vqa_accuracy",
    "vqa_score",
    "write_error_gallery",
]
