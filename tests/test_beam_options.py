"""The data jobs' runner: the in-process FnApiRunner unless beam_args name one (beam_jobs/options.py)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.options import new_pipeline, pipeline_options


def test_a_job_without_a_runner_runs_in_process_on_the_fn_api_runner_not_a_downloaded_prism():
    options = pipeline_options(["--direct_num_workers=2"])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2  # the other options pass through
    pipeline = new_pipeline(options)
    assert isinstance(pipeline.runner, FnApiRunner)
    with pipeline:
        assert_that(pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2), equal_to([2, 4, 6]))


def test_a_runner_in_beam_args_is_kept():
    for args, runner in ((["--runner=DirectRunner"], "DirectRunner"), (["--runner", "PrismRunner"], "PrismRunner")):
        assert pipeline_options(args).view_as(StandardOptions).runner == runner


def _worker_plugins(_):
    # Runs in a Beam worker subprocess: the options it was started with.
    import json
    import os

    options = json.loads(os.environ["PIPELINE_OPTIONS"])
    return sorted(v for k, v in options.items() if "beam_plugins" in k)


def test_worker_subprocesses_get_the_jobs_options():
    """Multi-process workers read their options from the runner's provision info; a bare
    FnApiRunner gives them none, so `--beam_plugins` (a filesystem like gs://) never loaded."""
    args = ["--direct_num_workers=2", "--direct_running_mode=multi_processing", "--beam_plugins=json"]
    with new_pipeline(pipeline_options(args)) as pipeline:
        seen = pipeline | beam.Create([0, 1]) | beam.Map(_worker_plugins)
        assert_that(seen, equal_to([[["json"]], [["json"]]]))
