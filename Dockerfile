# One image for Beam workers (Dataflow / Flink / Spark custom container) and the trainer.
#
#   docker build -t bertpipe .                                  # CPU
#   docker build -t bertpipe:gpu --build-arg EXTRAS=gpu .       # CUDA wheels for TensorFlow
#   docker run --rm -v "$PWD/runs:/home/bertpipe/runs" --entrypoint bertpipe bertpipe run
#
# The default entrypoint is Beam's SDK harness boot program, which is what a Beam
# runner starts in a custom worker container; the trainer is `--entrypoint bertpipe`.
# Python and Beam versions here must equal pyproject.toml's pins (tests/test_dockerfile.py checks).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0

FROM ${BEAM_SDK_IMAGE} AS beam_sdk

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY bert_keras ./bert_keras
COPY beam_jobs ./beam_jobs
# Same install as the README's first command: the package and its pinned dependencies.
RUN /opt/venv/bin/pip install ".${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 bertpipe
WORKDIR /home/bertpipe
COPY --chown=bertpipe:bertpipe configs ./configs
COPY --chown=bertpipe:bertpipe data ./data
USER 10001
ENTRYPOINT ["/opt/apache/beam/boot"]
