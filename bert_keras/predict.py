"""`bertpipe predict`: score a JSONL file with an exported raw-text SavedModel.

    bertpipe predict --model runs/demo/export/sentiment --input in.jsonl --output out.jsonl

Each input line is a JSON object holding the text fields the model's
serving_default signature takes (`text`; `text_a` and `text_b` for pairs, where
`text_a` may also be spelled `text` as in the training files; `question` and
`context` for QA). Each output line holds the input's line number, its `id` when
it has one, and the signature's outputs (label, label_id, probabilities; or
answer, score, start_char, end_char; ...). Lines stream through in batches, so
the file may be larger than memory; the output appears only when complete.

A line that is not a JSON object with those text fields does not stop the run
(one bad line must not cost the million good ones): it is set aside, with its
line number and the reason, in `<output stem>-invalid.jsonl` beside the output,
and counted, as `bertpipe score` does. `--strict` stops at the first such line
instead, with one line naming it, and writes no output.

Only tensorflow and tensorflow_text are needed to run the model; this module
adds JSON, batching and the progress bar.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from pipeline.contract.errors import UserError

ALIASES = {"text_a": "text"}  # signature input -> field name also accepted (the training files' spelling)
PASS_THROUGH = ("id",)


def load_signature(model_dir: str, name: str = "serving_default"):
    """(the loaded SavedModel, its signature `name`, sorted input names) or a one-line UserError."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tf-text ops the graph uses)

    if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        raise UserError(f"{model_dir} is not a SavedModel (no saved_model.pb): point --model at an exported model directory")
    model = tf.saved_model.load(model_dir)
    if name not in model.signatures:
        raise UserError(f"{model_dir} has no {name!r} signature (it has: {', '.join(sorted(model.signatures))})")
    signature = model.signatures[name]
    return model, signature, sorted(signature.structured_input_signature[1])


def fields_of(record, names: list[str], where: str) -> list[str]:
    """The text fields `names` of one parsed JSON record, or a UserError naming `where`."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {type(record).__name__}, not an object with the fields {', '.join(names)}")
    values = []
    for name in names:
        value = record.get(name, record.get(ALIASES.get(name, name)))
        if value is None:
            raise UserError(f"{where} lacks field {name!r} (the model takes: {', '.join(names)})")
        if not isinstance(value, str):
            raise UserError(f"{where}: field {name!r} must be a JSON string (text), got {type(value).__name__}")
        # A lone surrogate (JSON "\udcff") is not UTF-8: replaced, so the row still gets an answer.
        values.append(value.encode("utf-8", errors="replace").decode("utf-8"))
    return values


def json_ready(value):
    """A numpy output value -> plain JSON types (bytes decoded as UTF-8, invalid bytes replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no inf / nan
    return value


def run_batch(signature, names: list[str], rows: list[list[str]]) -> list[dict]:
    """Call the signature on one batch of text rows; one output dict per row."""
    import tensorflow as tf

    inputs = {name: tf.constant([row[i] for row in rows], tf.string) for i, name in enumerate(names)}
    outputs = {key: value.numpy() for key, value in signature(**inputs).items()}
    return [{key: json_ready(value[i]) for key, value in sorted(outputs.items())} for i in range(len(rows))]


def _records(path: str, names: list[str]) -> Iterator[tuple[int, dict | str, list[str] | UserError]]:
    """(line number, record, its text fields) per line; for a bad line (number, the raw
    line, the one-line UserError saying what is wrong with it)."""
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # invalid bytes -> U+FFFD
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline) carry nothing
            where = f"line {number} of {path}"
            try:
                record = json.loads(line)
            except ValueError as err:
                yield number, line, UserError(f"{where} is not JSON ({err.msg}): each line must be one JSON object")
                continue
            try:
                yield number, record, fields_of(record, names, where)
            except UserError as err:
                yield number, line, err


def invalid_path(output_path: str) -> str:
    """Where bad input lines go: `out/pred.jsonl` -> `out/pred-invalid.jsonl`."""
    stem, ext = os.path.splitext(output_path)
    return f"{stem}-invalid{ext or '.jsonl'}"


@contextlib.contextmanager
def _atomic_text_output(path: str) -> Iterator:
    """A streaming writer renamed onto `path` on success (pipeline.contract.atomic writes whole buffers)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as fh:
            return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return None


def predict_jsonl(model_dir: str, input_path: str, output_path: str, batch_size: int = 32,
                  strict: bool = False) -> int:
    """Score every line of `input_path` into `output_path`, bad lines into `invalid_path`
    (or, `strict`, stop at the first one); return the exit code (0)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if not os.path.isfile(input_path):
        raise UserError(f"input file {input_path} not found")
    _, signature, names = load_signature(model_dir)
    count = 0
    bad_path = invalid_path(output_path)
    bad: list[str] = []
    with _atomic_text_output(output_path) as out, tqdm(total=_count_lines(input_path), unit=" lines", desc="predict") as bar:
        batch: list[tuple[int, dict, list[str]]] = []

        def flush():
            results = run_batch(signature, names, [fields for _, _, fields in batch])
            for (number, record, _), result in zip(batch, results, strict=True):
                row = {"line": number, **{k: record[k] for k in PASS_THROUGH if k in record}, **result}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            bar.update(len(batch))
            batch.clear()

        for number, record, fields in _records(input_path, names):
            if isinstance(fields, UserError):
                if strict:
                    raise fields
                bad.append(json.dumps({"line": number, "error": str(fields), "text": record[:1000]},
                                      ensure_ascii=False) + "\n")
                bar.update(1)
                continue
            batch.append((number, record, fields))
            count += 1
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        if bad:
            with _atomic_text_output(bad_path) as side:
                side.writelines(bad)
        elif os.path.exists(bad_path):
            os.unlink(bad_path)  # left by an earlier run of this output: it would describe another input
    aside = f"; {len(bad)} invalid line(s) set aside in {bad_path}" if bad else ""
    print(f"bertpipe predict: wrote {count} predictions to {output_path}{aside}")
    return 0
