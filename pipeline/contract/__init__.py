"""The contract between stages: typed config, TFRecord schema and data manifest, errors, atomic I/O.

The bottom layer of the project. Every other package (`beam_jobs`, `bert_keras`,
the orchestration in `pipeline`) imports it; it imports nothing else of the
project (`tests/test_layering.py` checks), so a config can be validated and a
manifest read without TensorFlow, Beam or MLflow being imported.
"""
