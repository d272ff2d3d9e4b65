"""The data jobs' Beam pipeline, from `*.beam_args`: one place for the runner a job gets.

Without a `--runner`, Beam 2.77's default `DirectRunner` first tries `PrismRunner`, a Go binary it
downloads from GitHub when the job starts, and falls back to the in-process `FnApiRunner` only when
that fails. The same command would then run on a different runner, and reach out to the network,
wherever the network is up; offline (as in CI) it pays the failed attempt and ends on `FnApiRunner`.
So a job without `--runner` runs on `FnApiRunner` directly: the runner every test and benchmark of
this project measures. `--runner=...` in `beam_args` (Dataflow, Flink, Spark, Prism, DirectRunner)
is passed through untouched, with every other Beam option.

The `FnApiRunner` is built the way `DirectRunner` builds it when it falls back: with the job's
options in its provision info. Its worker subprocesses (`--direct_running_mode=multi_processing`)
read their options from there, so without it they would not see `--beam_plugins`, a filesystem's
credentials or any other option the launcher was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

LOCAL_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    args = list(beam_args)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
        args.append(f"--runner={LOCAL_RUNNER}")
    return PipelineOptions(args)


def _local_runner(options: PipelineOptions):
    # Deferred: the portability modules are only needed when the job runs locally.
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def new_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner `options` name; the local FnApiRunner gets the options for its workers."""
    if options.view_as(StandardOptions).runner == LOCAL_RUNNER:
        return beam.Pipeline(runner=_local_runner(options), options=options)
    return beam.Pipeline(options=options)
