"""The one-command job: images -> store -> eigenvectors -> segments -> figures -> summary.json.

:func:`analyze` is what ``interpret-spectral analyze`` and the demo run.  Its parts are
public so that a runner can split the work:

- :func:`analyze_samples` is the per-image job (decompose, segment, site contributions
  for every graph kind) on any subset of a store's samples: a distributed runner calls it
  once per shard and joins the shards with :func:`concat_results`;
- :func:`write_results` writes the result files and :func:`summarize` the summary.

Outputs are replaced only on success: the run is written into ``<out>.partial-<pid>``
beside ``out`` and swapped in when complete (:func:`interpret_spectral.store.atomic.replace_dir`);
a failed or interrupted run leaves an earlier run untouched and no temporary folder.

Examples
--------
>>> settings = AnalyzeSettings(graphs=("qk",), n_components=4, k=3)
>>> settings.graph_names
['qk']
"""

from interpret_spectral.pipeline.evaluate import ImageScores, evaluate_labels, evaluate_model, iter_labels
from interpret_spectral.pipeline.job import (
    AnalyzeSettings,
    GraphResult,
    analyze_samples,
    concat_results,
    dataset_kmeans,
    image_files,
    segment_each,
)
from interpret_spectral.pipeline.outputs import draw_figures, draw_overviews, safe_name, summarize, write_results
from interpret_spectral.pipeline.run import analyze
from interpret_spectral.pipeline.run_folder import check_run_folder, is_run_output, run_folder

__all__ = [
    "AnalyzeSettings",
    "GraphResult",
    "analyze",
    "analyze_samples",
    "concat_results",
    "write_results",
    "summarize",
    "image_files",
    "segment_each",
    "draw_figures",
    "draw_overviews",
    "safe_name",
    "dataset_kmeans",
    "check_run_folder",
    "is_run_output",
    "run_folder",
    "ImageScores",
    "evaluate_model",
    "evaluate_labels",
    "iter_labels",
]
