"""Which tf.distribute strategy and which precision a run uses.

"auto" picks, in order: TPUStrategy when `train.tpu` is set,
MultiWorkerMirroredStrategy when TF_CONFIG names more than one worker,
MirroredStrategy with more than one GPU, else the default (one device).
`train.strategy` overrides by name. The trainer has one loop for all of them.

Precision "auto" (`auto_precision`): mixed_bfloat16 on TPU, on GPUs of compute
capability 8.0 or higher (Ampere and later) and on CPUs with native bf16 (AVX512-BF16 /
AMX); mixed_float16 with loss scaling on older GPUs; float32 else. Must be set before
the model is built.

Kernels "auto" (`use_fused_kernels`): the training step's fused XLA kernels on CPU, where
they were measured (`bert_keras.fused`), and the plain layers on GPU and TPU.

`jit_compile` "auto" (`use_xla`): the whole step under XLA on GPU and TPU, not on CPU, where
XLA's dot and random bits are slower than oneDNN's (docs/benchmarks.md); `xla_scope` says how
much of the step one XLA program can hold under the strategy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

import tensorflow as tf

from pipeline.contract.config import TrainConfig
from pipeline.contract.errors import ConfigError


def tf_config_workers() -> int:
    """Number of workers (chief included) named by TF_CONFIG, 0 when unset."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except ValueError:
        raise ConfigError("TF_CONFIG is not valid JSON: fix or unset the environment variable") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


_MIRRORED: dict[tuple[str, ...], tf.distribute.Strategy] = {}


def choose_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    # Decide TPU / multi-worker before listing devices: listing initializes the
    # TF context, after which MultiWorkerMirroredStrategy can no longer be made.
    name = cfg.strategy
    if name == "auto":
        if cfg.tpu:
            name = "tpu"
        elif tf_config_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "tpu":
        if not cfg.tpu:
            raise ConfigError("train.strategy is tpu but train.tpu is not set: give the TPU name or grpc address")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=cfg.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi_worker":
        if tf_config_workers() == 0:
            raise ConfigError("train.strategy is multi_worker but TF_CONFIG is not set: export the cluster spec")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        # Without GPUs mirror over the logical CPU devices (tests split the CPU in two).
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [d.name for d in tf.config.list_logical_devices("CPU")]
        # One strategy per device set per process: a second MirroredStrategy numbers its collectives
        # from the same keys as the first, so pretraining then fine-tuning in one `bertpipe run`
        # failed on the first all-reduce ("Shape mismatch in the collective instance 100").
        key = tuple(devices)
        if key not in _MIRRORED:
            _MIRRORED[key] = tf.distribute.MirroredStrategy(devices=devices)
        return _MIRRORED[key]
    return tf.distribute.get_strategy()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            line = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU: AVX512-BF16 (AMD EPYC, recent Xeon) or AMX."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_has_amx() -> bool:
    """Intel AMX tiles with bf16 (Xeon, Sapphire Rapids on): oneDNN's bf16 matmuls there ran ~3x float32."""
    return "amx_bf16" in _cpu_flags()


def device_kind(strategy: tf.distribute.Strategy | None = None) -> str:
    """"tpu", "gpu" or "cpu": what the training step runs on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def gpu_compute_capability() -> tuple[int, int] | None:
    """The lowest compute capability among the visible GPUs (each must manage the policy), None without GPUs."""
    found = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
             for gpu in tf.config.list_physical_devices("GPU")]
    found = [tuple(c) for c in found if c]
    return min(found) if found else None


def auto_precision(device: str, compute_capability: tuple[int, int] | None = None, cpu_bf16: bool = False) -> str:
    """The "auto" precision for a device: `device` "tpu", "gpu" (with its compute capability) or "cpu"
    (with or without native bf16). bf16 needs no loss scaling; GPUs before Ampere (8.0) have no
    fast bf16, so they get fp16 with loss scaling."""
    if device == "tpu":
        return "mixed_bfloat16"
    if device == "gpu":
        return "mixed_bfloat16" if compute_capability is not None and compute_capability >= (8, 0) else "mixed_float16"
    return "mixed_bfloat16" if cpu_bf16 else "float32"


def resolve_precision(precision: str, strategy: tf.distribute.Strategy | None = None) -> str:
    if precision != "auto":
        return precision
    device = device_kind(strategy)
    return auto_precision(device, gpu_compute_capability() if device == "gpu" else None, cpu_has_bf16())


def use_fused_kernels(kernels: str, strategy: tf.distribute.Strategy | None = None, device: str | None = None) -> bool:
    """`train.kernels` -> whether the encoder trains with the fused XLA kernels: "fused" or "plain"
    as said; "auto": fused on CPU only (they were shaped for oneDNN matmuls and XLA's CPU code)."""
    if kernels != "auto":
        return kernels == "fused"
    return (device or device_kind(strategy)) == "cpu"


def use_xla(jit_compile: bool | str, strategy: tf.distribute.Strategy | None = None,
            device: str | None = None) -> bool:
    """`train.jit_compile` -> whether the training step runs under XLA: true or false as said;
    "auto": on GPU and TPU (on CPU the fused kernels with oneDNN's matmuls measured faster)."""
    if jit_compile != "auto":
        return bool(jit_compile)
    return (device or device_kind(strategy)) != "cpu"


def xla_scope(xla: bool, strategy: tf.distribute.Strategy) -> str | None:
    """How much of the per-replica step is one XLA program: "step" (forward, backward,
    accumulation, clipping, update) on one device; "grads" (forward, backward, accumulation)
    under Mirrored and MultiWorkerMirrored, whose all-reduces are merge_calls TensorFlow cannot
    trace inside a nested XLA function; None without XLA, and on TPU, where TPUStrategy compiles
    the whole replica function by itself."""
    if not xla or isinstance(strategy, tf.distribute.TPUStrategy):
        return None
    if isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        return "grads"
    return "step"  # the default strategy, OneDeviceStrategy


def set_precision(policy: str) -> str:
    """Set the global Keras dtype policy; call before building the model."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def precision_scope(policy: str):
    """The global Keras dtype policy is `policy` inside, and what it was before afterwards."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    set_precision(policy)
    try:
        yield policy
    finally:
        set_precision(previous)


def restores_precision(fn):
    """Decorator: `fn` may set the global dtype policy; the caller's comes back when it returns or raises.

    Pretraining and fine-tuning pick a policy for their own models; leaked, it would silently
    make every later model of the process (the export stage's rebuilt ones) compute in bf16."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import keras

        with precision_scope(keras.mixed_precision.global_policy().name):
            return fn(*args, **kwargs)
    return wrapper


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes summaries and the real checkpoint directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return task_type in (None, "worker") and task_id == 0 and not has_chief


def worker_id(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0) if resolver is not None else 0


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy, accumulation_steps: int) -> int:
    """Rows per optimizer step: per-replica batch x replicas x accumulation."""
    return per_replica * strategy.num_replicas_in_sync * accumulation_steps


def describe(strategy: tf.distribute.Strategy, per_replica: int, accumulation_steps: int, policy: str) -> str:
    line = (
        f"strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s), precision {policy}; "
        f"global batch {global_batch_size(per_replica, strategy, accumulation_steps)} = {per_replica} per replica "
        f"x {strategy.num_replicas_in_sync} replicas x {accumulation_steps} accumulation steps"
    )
    return line  # the caller prints it (through its log_fn), once
