"""Subprocess entry point of tests/test_remote_work_dir.py (no tests here): the tiny pipeline with
`run.work_dir` on TensorFlow's in-process `ram://` filesystem, so it runs in one process.

    python -m tests.ram_run CONFIG TRACKING_URI

Runs `bertpipe run` (vocab, prepare, pretrain, finetune, export) with its work dir at ram://work,
then reruns it (every stage must be up to date, read back from ram://), loads the exported
SavedModel from ram:// and classifies two lines, and prints one `RESULT {json}` line: the exit
codes, every object under ram://work, the predictions.
"""

from __future__ import annotations

import json
import os
import sys

WORK = "ram://work"


def main(config: str, tracking_uri: str) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from pipeline import cli
    from tests import ram_fs  # registers the Beam filesystem for ram:// (the data jobs write through Beam)

    argv = ["run", "--config", config, "--set", f"run.work_dir={WORK}", "--set", f"run.tracking_uri={tracking_uri}"]
    first = cli.main(argv)
    again = cli.main(argv)
    import tensorflow as tf

    predictions = None
    if tf.io.gfile.exists(WORK + "/export/sentiment/saved_model.pb"):
        model = tf.saved_model.load(WORK + "/export/sentiment")
        out = model.signatures["serving_default"](text=tf.constant(["a wonderful film", "dull and boring"]))
        predictions = [label.decode() for label in out["label"].numpy().tolist()]
    print("RESULT " + json.dumps({"first": first, "again": again, "objects": ram_fs.objects(WORK),
                                  "predictions": predictions}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
