"""All MLflow calls live here.

One parent run per `bertpipe run` (or single-stage command), one nested run per
stage. Where the runs go:

1. `run.tracking_uri` in the config (or `--set run.tracking_uri=...`),
2. else the `MLFLOW_TRACKING_URI` environment variable,
3. else a local SQLite store `<work_dir>/mlflow.db`, artifacts in `<work_dir>/mlartifacts`
   (no server needed; look at it with `mlflow ui --backend-store-uri sqlite:///<work_dir>/mlflow.db`).
   A remote work_dir (gs://, ...) has no default: SQLite needs a local file, so the run asks for a
   tracking URI (a server, whose artifact store takes the artifacts, or a local sqlite:///PATH, whose
   artifacts go next to it) or --no-mlflow.

Artifacts on a remote work_dir are copied to a temporary local directory and logged from there:
MLflow's client uploads only local files, to the tracking server's artifact store.

Failure policy (a remote server that goes away): the stage checks the server
before it starts and fails fast with one line if it cannot be reached. Once a
stage runs, a failed log call never kills training: it is counted, and the
stage ends by saying exactly what was not logged (`Tracker.failures`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.contract.atomic import exists, has_files, is_remote, local_copy
from pipeline.contract.errors import ConfigError, UserError

log = logging.getLogger("bertpipe")

_PACKAGES = ("tensorflow", "tensorflow-text", "keras", "keras-hub", "apache-beam", "mlflow")


def resolve_tracking_uri(config_uri: str | None, work_dir: str) -> str:
    if config_uri:
        return config_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if is_remote(work_dir):
        raise ConfigError(f"run.work_dir {work_dir} is remote and MLflow's default SQLite store needs a local file: "
                          "set run.tracking_uri (a tracking server, or sqlite:///LOCAL/PATH/mlflow.db), "
                          "or pass --no-mlflow")
    return "sqlite:///" + os.path.join(os.path.abspath(work_dir), "mlflow.db")


def _environment_tags() -> dict[str, str]:
    tags = {"bertpipe.python": sys.version.split()[0]}
    for name in ("bertpipe",) + _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            tags[f"bertpipe.version.{name}"] = importlib.metadata.version(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        if commit:
            tags["mlflow.source.git.commit"] = commit
    return tags


def _params(flat: dict[str, Any]) -> dict[str, str]:
    # MLflow caps a param value at 6000 characters; a long list is cut, not refused.
    return {k: str(v)[:6000] for k, v in flat.items()}


class Tracker:
    """A thin, failure-counting wrapper over MLflow's fluent API."""

    def __init__(self, tracking_uri: str, experiment: str, work_dir: str):
        import mlflow

        self.mlflow = mlflow
        self.uri = tracking_uri
        self.experiment = experiment
        self.work_dir = work_dir if is_remote(work_dir) else os.path.abspath(work_dir)
        self.failures: list[str] = []
        # MLflow's HTTP client retries a dead server with backoff for minutes by default;
        # a pipeline wants to know within seconds.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # A pipeline prints its own progress; MLflow's per-artifact bars only add noise.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(tracking_uri)

    # ---- connection ------------------------------------------------------------
    def check_reachable(self) -> None:
        """Fail fast, in one line, when the tracking store cannot be used."""
        try:
            exp = self.mlflow.get_experiment_by_name(self.experiment)
            if exp is None:
                location = None
                if self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri:
                    location = "file://" + os.path.join(self._local_store_dir(), "mlartifacts")
                self.mlflow.create_experiment(self.experiment, artifact_location=location)
            self.mlflow.set_experiment(self.experiment)
        except Exception as err:  # any transport or store error: the message is what matters
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise UserError(
                f"MLflow tracking store {self.uri} is not usable ({reason}); start the server, "
                "or set run.tracking_uri / MLFLOW_TRACKING_URI to a reachable store"
            ) from None

    def _local_store_dir(self) -> str:
        """Where a local store keeps its artifacts: the work dir, or beside the SQLite file when the
        work dir is remote."""
        if not is_remote(self.work_dir):
            return self.work_dir
        path = self.uri.split(":///", 1)[-1] if self.uri.startswith("sqlite:") else self.uri.split("://", 1)[-1]
        return os.path.dirname(os.path.abspath(path))

    def _safely(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            self.failures.append(f"{what}: {reason}")
            log.warning("MLflow: could not log %s (%s); training goes on", what, reason)
            return None

    # ---- runs ------------------------------------------------------------------
    @contextlib.contextmanager
    def pipeline_run(self, name: str, config: dict[str, Any]) -> Iterator[str]:
        from pipeline.contract.config import flatten

        self.check_reachable()
        run = self.mlflow.start_run(run_name=name)
        with self._ending(run):
            self.mlflow.set_tags(_environment_tags() | {"bertpipe.kind": "pipeline"})
            self._safely("config", lambda: self.mlflow.log_dict(config, "config.resolved.json"))
            self._safely("params", lambda: self.mlflow.log_params(_params(flatten(config))))
            yield run.info.run_id

    @contextlib.contextmanager
    def stage_run(self, stage: str, section: dict[str, Any]) -> Iterator[str]:
        from pipeline.contract.config import flatten

        run = self._safely(f"stage run {stage}", lambda: self.mlflow.start_run(run_name=stage, nested=True))
        if run is None:  # the store went away: the stage still runs, unlogged
            yield None
            return
        with self._ending(run):
            self._safely("tags", lambda: self.mlflow.set_tags({"bertpipe.stage": stage, "bertpipe.kind": "stage"}))
            self._safely("params", lambda: self.mlflow.log_params(_params(flatten(section))))
            yield run.info.run_id

    @contextlib.contextmanager
    def _ending(self, run: Any) -> Iterator[None]:
        """End `run` as FINISHED or FAILED; a store that went away cannot stop the stage."""
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        finally:
            # end_run pops the local run stack before its remote call, so a failure here
            # leaves no dangling active run behind.
            self._safely(f"end of run {run.info.run_id}", lambda: self.mlflow.end_run(status))

    # ---- logging ---------------------------------------------------------------
    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._safely(f"metrics at step {step}", lambda: self.mlflow.log_metrics(clean, step=step))

    def tags(self, tags: dict[str, str]) -> None:
        self._safely("tags", lambda: self.mlflow.set_tags(tags))

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        if not (has_files(path) or exists(path)):
            return
        with local_copy(path) as local:  # remote: a temporary local copy (MLflow uploads local files)
            if os.path.isdir(local):
                self._safely(f"artifacts {path}", lambda: self.mlflow.log_artifacts(local, artifact_path))
            else:
                self._safely(f"artifact {path}", lambda: self.mlflow.log_artifact(local, artifact_path))

    def dict_artifact(self, data: dict[str, Any], name: str) -> None:
        self._safely(f"artifact {name}", lambda: self.mlflow.log_dict(data, name))

    def saved_model(self, saved_model_dir: str, name: str, registered_name: str | None, input_example: Any,
                    output_example: Any) -> dict[str, Any] | None:
        """Log an exported raw-text SavedModel as a pyfunc model (`pipeline.mlflow_model`)
        with a signature inferred from the examples; register it under `registered_name`
        (a new version each call). Returns {"model_uri", "registered_name", "version"} or None."""

        with local_copy(saved_model_dir) as local:  # MLflow copies the model from a local directory
            return self._safely(f"model {name}", lambda: self._log_saved_model(local, name, registered_name,
                                                                               input_example, output_example))

    def _log_saved_model(self, saved_model_dir: str, name: str, registered_name: str | None, input_example: Any,
                         output_example: Any) -> dict[str, Any]:
        from mlflow.models import infer_signature

        import pipeline.mlflow_model as wrapper

        versions = {p: importlib.metadata.version(p) for p in ("tensorflow", "tensorflow-text", "mlflow")}
        with warnings.catch_warnings():
            # The signature comes from the examples; MLflow's hint about integer columns in
            # them (label ids) is not the user's to act on.
            warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
            info = self.mlflow.pyfunc.log_model(
                name=name,
                # Logged from code (the file, not a pickle); it is self-contained, so
                # serving needs no bertpipe install.
                python_model=wrapper.__file__,
                artifacts={wrapper.SAVED_MODEL_ARTIFACT: saved_model_dir},
                signature=None if input_example is None else infer_signature(input_example, output_example),
                input_example=input_example,
                registered_model_name=registered_name,
                # Given, not inferred: inference loads the model in a subprocess (slow, and it guesses).
                pip_requirements=[f"{p}=={v}" for p, v in versions.items()] + ["pandas"],
            )
        return {"model_uri": info.model_uri, "registered_name": registered_name,
                "version": getattr(info, "registered_model_version", None)}

    def summary(self) -> str | None:
        """One line on what was not logged, or None when everything was."""
        if not self.failures:
            return None
        return f"MLflow: {len(self.failures)} logging call(s) failed and were not logged; first: {self.failures[0]}"
