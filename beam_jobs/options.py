"""The data jobs' Beam pipeline options, from `*.beam_args`: one place for the runner a job gets.

Without a `--runner`, Beam 2.77's default `DirectRunner` first tries `PrismRunner`, a Go binary it
downloads from GitHub when the job starts, and falls back to the in-process `FnApiRunner` only when
that fails. The same command would then run on a different runner, and reach out to the network,
wherever the network is up; offline (as in CI) it pays the failed attempt and ends on `FnApiRunner`.
So a job without `--runner` runs on `FnApiRunner` directly: the runner every test and benchmark of
this project measures. `--runner=...` in `beam_args` (Dataflow, Flink, Spark, Prism, DirectRunner)
is passed through untouched, with every other Beam option.
"""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

LOCAL_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    args = list(beam_args)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
        args.append(f"--runner={LOCAL_RUNNER}")
    return PipelineOptions(args)
