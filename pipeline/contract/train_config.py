"""The training options shared by pretraining and every fine-tuning task, and the base of every config section.

Its own module because both `pipeline.contract.config` (pretraining) and
`pipeline.contract.task_config` (the task types) build on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.contract.section import Section as _Section

# Learning-rate shapes (bert_keras/optimization.py draws them): warmup then a linear or
# polynomial decay, or constant; Cramming's budget triangle; warmup-stable-decay.
SCHEDULES = ("linear", "polynomial", "constant", "triangle", "wsd")


class TrainConfig(_Section):
    """Options shared by pretraining and every fine-tuning task."""

    batch_size: int = Field(32, ge=1, description=(
        "per replica; global batch = batch x replicas x accumulation steps (logged)"))
    eval_batch_size: int = Field(64, ge=1, description="evaluation batch")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate")
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup in steps; unset: `warmup_ratio`")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="linear warmup as a share of all steps")
    schedule: Literal[SCHEDULES] = Field("linear", description=(
        "the learning rate's shape: warmup then `linear` or `polynomial` decay to 0, or `constant`; `wsd` "
        "(warmup-stable-decay, ModernBERT: the peak until the last `decay_ratio` of the run, then linear to 0); "
        "`triangle` (Cramming's budget triangle: from a quarter of the peak up to the peak, then linear to 0 over "
        "the last `decay_ratio`; no separate warmup)"))
    decay_ratio: float = Field(0.2, gt=0, le=1, description=(
        "`wsd`, `triangle`: share of the run spent decaying (Cramming's triangle: 0.25)"))
    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="optimizer")
    weight_decay: float = Field(0.01, ge=0, description="never applied to LayerNorm and biases")
    clip_norm: float | None = Field(1.0, gt=0, description="global-norm gradient clipping; unset: none")
    accumulation_steps: int = Field(1, ge=1, description="gradient accumulation")
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16", "auto"] = Field("auto", description=(
        "`auto`: `mixed_bfloat16` on TPU, on GPUs of compute capability 8.0 or higher and on CPUs with native bf16 "
        "(AVX512-BF16, AMX), `mixed_float16` with loss scaling on older GPUs, `float32` else; or `float32`, "
        "`mixed_bfloat16`, `mixed_float16`"))
    jit_compile: bool | Literal["auto"] = Field("auto", description=(
        "XLA for the whole training step (forward, backward, accumulation, clipping, update; under Mirrored and "
        "multi-worker strategies the all-reduce, clipping and update stay outside); `auto`: on GPU and TPU, not on "
        "CPU, where it measured slower (XLA's CPU matmuls); the fused kernels are compiled either way"))
    kernels: Literal["auto", "fused", "plain"] = Field("auto", description=(
        "the training step's element-wise code: `fused` XLA kernels (tuned on CPU) or the `plain` layers; `auto`: "
        "fused on CPU, plain on GPU and TPU (`bert_keras.distribute.use_fused_kernels`). Both give the same values "
        "and gradients"))
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = Field(
        "auto", description="tf.distribute strategy; `multi_worker` reads `TF_CONFIG`")
    tpu: str | None = Field(None, description="TPU name or address for `TPUStrategy`")
    packing: bool = Field(True, description="several short instances share one row, without attending across")
    pack_max_instances: int = Field(8, ge=1, description="packing: most instances sharing one row")
    log_every: int = Field(50, ge=1, description="steps between progress lines")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept")
