"""The data jobs' runner: the in-process FnApiRunner unless beam_args name one (beam_jobs/options.py)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.options import pipeline_options


def test_a_job_without_a_runner_runs_in_process_on_the_fn_api_runner_not_a_downloaded_prism():
    options = pipeline_options(["--direct_num_workers=2"])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2  # the other options pass through
    pipeline = beam.Pipeline(options=options)
    assert isinstance(pipeline.runner, FnApiRunner)
    with pipeline:
        assert_that(pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2), equal_to([2, 4, 6]))


def test_a_runner_in_beam_args_is_kept():
    for args, runner in ((["--runner=DirectRunner"], "DirectRunner"), (["--runner", "PrismRunner"], "PrismRunner")):
        assert pipeline_options(args).view_as(StandardOptions).runner == runner
