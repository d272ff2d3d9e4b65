"""The `bertpipe` command line.

    bertpipe run                      # every stage of the demo config
    bertpipe run --config my.yaml --set pretrain.steps=5000
    bertpipe prepare --config my.yaml # one stage (and whatever it needs that is missing or stale)

Exit codes: 0 ok, 1 a stage failed, 2 bad usage or config, 3 data that does not
fit the next stage (vocab, lengths, schema), 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
import warnings

from pipeline.contract.errors import UserError

STAGE_HELP = {
    "vocab": "learn a WordPiece vocab from the corpus with a Beam job (or take vocab.vocab_file)",
    "prepare": "Beam job: documents -> sentences -> NSP pairs (or MLM-only segments) -> masked, sharded TFRecords + manifest",
    "pretrain": "pretrain the Keras BERT (MLM + NSP) on the prepared TFRecords; resumes after a kill",
    "finetune": "fine-tune every task of the finetune section (dev chooses, test reports once), logged to MLflow",
    "distill": "train a smaller student of each task with a `distill` block from its fine-tuned model (the teacher)",
    "export": "build SavedModels that take raw strings (tokenizer inside the graph) and register them in MLflow",
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", metavar="YAML", default=None, help="config file (default: configs/demo.yaml, the demo run)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set pretrain.steps=200 (repeatable; value parsed as YAML)",
    )
    parser.add_argument("--work-dir", metavar="DIR", help="shorthand for --set run.work_dir=DIR")
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun the command's own stages from scratch, deleting their previous output and checkpoints "
        "(the only option that deletes training; stages before them still run only if missing or stale)",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertpipe",
        description="End-to-end BERT: Beam data jobs, Keras 3 pretraining and fine-tuning, MLflow, raw-text SavedModels.",
        epilog="Run `bertpipe COMMAND --help` for a command's options. Docs: README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run every stage of the config (skips stages that are up to date)")
    _common(run)
    for name, text in STAGE_HELP.items():
        stage = sub.add_parser(name, help=text, description=text + ". Upstream stages that are missing or stale run first.")
        _common(stage)
    show = sub.add_parser("config", help="print the resolved config (after --set overrides) as YAML")
    _common(show)
    predict = sub.add_parser("predict", help="score a JSONL file with an exported SavedModel")
    predict.add_argument("--model", required=True, metavar="DIR", help="an exported SavedModel directory")
    predict.add_argument("--input", required=True, metavar="JSONL", help="one JSON object a line with the text fields")
    predict.add_argument("--output", required=True, metavar="JSONL", help="where to write one prediction a line")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--strict", action="store_true",
                         help="stop at the first line that is not a JSON object with the model's text fields "
                         "(default: set such lines aside in OUTPUT-invalid.jsonl, count them and go on)")
    predict.add_argument("--debug", action="store_true", help="show full tracebacks")
    score = sub.add_parser(
        "score",
        help="Beam batch scoring (RunInference) of JSONL files with an exported SavedModel, on any runner",
        description="Score JSONL files at scale with Beam's RunInference. Arguments after `--` are standard Beam "
        "pipeline options, e.g. -- --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp",
    )
    score.add_argument("--model", required=True, metavar="DIR", help="an exported SavedModel directory")
    score.add_argument("--input", required=True, metavar="PATTERN", help="JSONL files (glob, any Beam filesystem)")
    score.add_argument("--output", required=True, metavar="PREFIX", help="output prefix: PREFIX-SSSSS-of-NNNNN.jsonl")
    score.add_argument("--debug", action="store_true", help="show full tracebacks")
    score.add_argument("beam_args", nargs=argparse.REMAINDER, help="-- then Beam pipeline options")
    return parser


def _setup_logging(debug: bool) -> None:
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its own level on import
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("absl", "tensorflow", "apache_beam", "alembic", "mlflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:  # Beam warns on the root logger that an optional GCP client (BigQuery's) is absent
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: not record.getMessage().startswith("apitools not found"))


# TensorFlow's C++ libraries print these from static initializers, before TF_CPP_MIN_LOG_LEVEL
# applies, and twice (two libraries); users read them as problems. Only these lines are dropped.
_NATIVE_BANNERS = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I0000 \S+ +\d+ \S+\] (oneDNN custom operations are on|Could not find cuda drivers))"
)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow once with its start-up INFO banners filtered out of stderr.

    They are written to file descriptor 2 directly, so they are caught there (a
    temporary file) and every other line is passed on unchanged.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", errors="replace").splitlines():
                if not _NATIVE_BANNERS.match(line):
                    print(line, file=sys.stderr)


def _run_pipeline(args: argparse.Namespace) -> int:
    from pipeline.contract.config import ConfigNote, load_config, to_dict
    from pipeline.runner import run_stages
    from pipeline.stages import build_stages, stage_command
    from pipeline.tracking import Tracker, resolve_tracking_uri

    overrides = list(args.overrides) + ([f"run.work_dir={args.work_dir}"] if args.work_dir else [])
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", ConfigNote)
        cfg = load_config(args.config, overrides)
    for note in dict.fromkeys(str(n.message) for n in notes if issubclass(n.category, ConfigNote)):
        print(f"bertpipe: note: {note}", file=sys.stderr)
    if args.command == "config":
        import yaml

        sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    if not args.debug:  # after the config checks, so a config error is not delayed by TensorFlow's import
        _import_tensorflow_quietly()
    until = None if args.command == "run" else args.command
    stages = build_stages(cfg, until=until)
    work_dir = cfg.run.work_dir
    from pipeline.contract.atomic import ensure_writable_dir

    ensure_writable_dir(work_dir)
    # --force applies to the stages the command names (all of them for `run`), never to the
    # upstream stages a stage command runs only when they are missing or stale.
    force = args.force and (True if until is None else {s.name for s in stages if stage_command(s.name) == until})
    if args.no_mlflow:
        results = run_stages(stages, work_dir, tracker=None, force=force)
        uri = None
    else:
        uri = resolve_tracking_uri(cfg.run.tracking_uri, work_dir)
        tracker = Tracker(uri, cfg.run.experiment, work_dir)
        with tracker.pipeline_run(f"bertpipe {args.command}", to_dict(cfg)):
            results = run_stages(stages, work_dir, tracker=tracker, force=force)
        if tracker.summary():
            logging.getLogger("bertpipe").warning(tracker.summary())
    _print_summary(results, work_dir, uri)
    return 0


def _print_summary(results, work_dir: str, uri: str | None) -> None:
    where = work_dir if "://" in work_dir else os.path.abspath(work_dir)
    print(f"\nbertpipe: {len(results)} stage(s) in {where}")
    for r in results:
        figures = r.record.get("outputs", {}).get("summary") or ""
        print(f"  {r.name:<24} {r.status:<7} {r.seconds:7.1f} s  {figures}")
    for r in results:
        verdict = _start_verdict(r.record.get("outputs", {}))
        if verdict:
            print(f"  {r.name.split(':', 1)[-1]}: {verdict}")
    if uri:
        if uri.startswith("sqlite:"):
            print(f"MLflow runs: mlflow ui --backend-store-uri {uri}")
        else:
            print(f"MLflow runs: {uri}")


def _start_verdict(outputs: dict) -> str | None:
    """A fine-tuning task's start against random init and the baselines, in test points, and whether the gap to
    random init is beyond the noise (larger than twice the larger std over the repeats); None for other stages."""
    test, metric = outputs.get("test"), outputs.get("metric")
    if not isinstance(test, dict) or "main" not in test or len(test) < 2:
        return None
    from bert_keras.tasks import TASKS  # the task registry: is a metric in percent

    scale = 1 if TASKS[outputs["type"]].percent else 100  # points: percent for every task type
    main = test["main"]
    start = "pretrained" if outputs.get("init", "").endswith("encoder.weights.h5") else "the start"
    parts = []
    for other, spread in test.items():
        if other == "main":
            continue
        gap = scale * (main["mean"] - spread["mean"])
        text = f"{start} {'-' if gap < 0 else '+'}{abs(gap):.1f} points over {other.replace('_', ' ')}"
        if other == "random_init" and len(main["runs"]) > 1:
            noise = 2 * scale * max(main["std"], spread["std"])
            text += f" ({'beyond' if abs(gap) > noise else 'within'} the noise: twice the larger std is {noise:.1f})"
        parts.append(text)
    runs = len(main["runs"])
    return f"test {metric}, " + (f"mean of {runs} runs: " if runs > 1 else "one run: ") + "; ".join(parts)


def _predict(args: argparse.Namespace) -> int:
    try:
        from bert_keras.predict import predict_jsonl
    except ModuleNotFoundError as err:
        if err.name != "bert_keras.predict":
            raise
        raise UserError("bertpipe predict is not yet available in this version (tracked in issue 6)") from None
    return predict_jsonl(args.model, args.input, args.output, args.batch_size, strict=args.strict)


def _score(args: argparse.Namespace) -> int:
    from beam_jobs.score import score_jsonl

    beam_args = [a for a in args.beam_args if a != "--"]
    counts = score_jsonl(args.model, args.input, args.output, beam_args)
    print(f"bertpipe score: {counts.get('scored', 0)} scored, {counts.get('invalid', 0)} invalid lines -> {args.output}-*")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "debug", False))
    try:
        if args.command in ("predict", "score") and not args.debug:
            _import_tensorflow_quietly()
        if args.command == "predict":
            return _predict(args)
        if args.command == "score":
            return _score(args)
        return _run_pipeline(args)
    except UserError as err:
        print(f"bertpipe: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("bertpipe: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not the user's input: one line, full trace with --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(
                f"bertpipe: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                "(rerun with --debug for the traceback)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
