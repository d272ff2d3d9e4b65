"""Optimizers and learning-rate schedules built from `TrainConfig`.

BERT's recipe: AdamW (or LAMB for large batches), linear warmup then decay, and
weight decay that skips LayerNorm and biases. The budget recipes' schedules
(Cramming's triangle, ModernBERT's warmup-stable-decay) are shapes of the same
function (`shaped_lr`), over steps or over the share of a time or token budget. Both optimizers are Keras 3's
(`keras.optimizers.AdamW`, `keras.optimizers.Lamb`); AdamW's per-variable update
is replaced by fused kernels (`FusedAdamW`, same math), and the schedule is ours,
because Keras has no warmup-then-decay schedule.

Gradient clipping is not set on the optimizer: Keras clips each replica's local
gradients before the cross-replica sum, which changes the result with more than
one replica. The trainer clips the summed gradients instead (`trainer.py`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bert_keras import compat
from bert_keras.fused import compiled
from pipeline.contract.config import SCHEDULES, TrainConfig

# Power of the "polynomial" decay: (1 - progress) ** 2 falls faster than linear
# early on and flattens near the end; "linear" is the power-1 case.
POLYNOMIAL_POWER = 2.0
# Cramming's budget triangle (`budget-triangle2` in JonasGeiping/cramming, the schedule of
# its final recipe) starts at a quarter of the peak, rises until the decay share begins,
# then falls linearly to zero at the end of the budget.
TRIANGLE_START = 0.25


def shaped_lr(kind: str, peak: float, end: float, power: float, decay_share: float, done, warmup_share: float,
              warm_done, in_warmup):
    """The learning rate of every schedule shape, from where the run is.

    done: share of the run done, 0..1 (the decay's clock); warmup_share: share of the run
    that is warmup; warm_done: share of the warmup done; in_warmup: bool tensor.
    linear / polynomial: warmup, then decay from peak to `end` over the rest; constant:
    warmup, then peak; wsd (warmup-stable-decay, ModernBERT): warmup, peak until the last
    `decay_share`, then linear to `end`; triangle: see TRIANGLE_START (no separate warmup).
    """
    done = keras.ops.clip(done, 0.0, 1.0)
    if kind == "triangle":
        rise = TRIANGLE_START + done * (1.0 - TRIANGLE_START) / max(1.0 - decay_share, 1e-9)
        return end + (peak - end) * keras.ops.minimum(rise, (1.0 - done) / decay_share)
    if kind == "constant":
        after = keras.ops.convert_to_tensor(peak, "float32")
    elif kind == "wsd":
        after = end + (peak - end) * keras.ops.minimum(1.0, (1.0 - done) / decay_share)
    else:
        share = keras.ops.convert_to_tensor(warmup_share, "float32")  # same rounding above and below
        progress = keras.ops.clip((done - share) / keras.ops.maximum(1.0 - share, 1e-9), 0.0, 1.0)
        after = end + (peak - end) * keras.ops.power(1.0 - progress, 1.0 if kind == "linear" else power)
    return keras.ops.where(in_warmup, peak * keras.ops.minimum(warm_done, 1.0), after)


class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Shared by both schedules: the position can come from the trainer's variables
    (`bind`) instead of the optimizer's iteration count, so a second pretraining phase,
    whose optimizer carries on counting, runs its own schedule from its own step 0."""

    step_variable = None
    progress_variable = None

    def bind(self, step=None, progress=None):
        self.step_variable, self.progress_variable = step, progress

    def _step(self, iterations):
        return keras.ops.cast(self.step_variable if self.step_variable is not None else iterations, "float32")


@keras.saving.register_keras_serializable(package="bertpipe")
class WarmupDecay(_Schedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then a shape over the rest
    of `total_steps` (BERT's: step i of the warmup runs at peak * (i + 1) / warmup, and
    the decay reaches `end` at step `total_steps`).

    kind: any of SCHEDULES (constant holds `peak` after warmup).
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, kind: str = "linear", end: float = 0.0,
                 power: float = POLYNOMIAL_POWER, decay_share: float = 0.2):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}")
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, 1))
        self.kind = kind
        self.end = float(end)
        self.power = float(power)
        self.decay_share = float(decay_share)

    def __call__(self, step):
        step = self._step(step)
        total, warm = float(self.total_steps), float(max(self.warmup_steps, 1))
        return shaped_lr(self.kind, self.peak, self.end, self.power, self.decay_share, step / total,
                         self.warmup_steps / total, (step + 1.0) / warm,
                         step < self.warmup_steps if self.warmup_steps > 0 else False)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "kind": self.kind, "end": self.end, "power": self.power, "decay_share": self.decay_share}


@keras.saving.register_keras_serializable(package="bertpipe")
class BudgetSchedule(_Schedule):
    """The same shapes over the share of a budget (time or tokens) spent.

    The trainer sets the bound `progress` variable before every step to the share of
    the budget spent at that step's end, so the last step runs at the schedule's final
    value. Warmup lasts `warmup_steps` steps when given (warmup steadies the first
    optimizer steps, however long they take), else `warmup_share` of the budget.
    """

    def __init__(self, peak: float, warmup_share: float, kind: str = "linear", end: float = 0.0,
                 power: float = POLYNOMIAL_POWER, decay_share: float = 0.2, warmup_steps: int | None = None):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}")
        self.peak, self.warmup_share, self.kind, self.end = float(peak), float(warmup_share), kind, float(end)
        self.power, self.decay_share, self.warmup_steps = float(power), float(decay_share), warmup_steps

    def __call__(self, step):
        if self.progress_variable is None:
            raise ValueError("BudgetSchedule needs the trainer's progress: Trainer(..., schedule=this)")
        done = keras.ops.cast(self.progress_variable, "float32")
        if self.warmup_steps is not None:
            step = self._step(step)
            warm_done, in_warmup = (step + 1.0) / float(max(self.warmup_steps, 1)), step < self.warmup_steps
            share = 0.0  # the decay of linear / polynomial runs over the whole budget
        else:
            warm_done, in_warmup = done / max(self.warmup_share, 1e-9), done < self.warmup_share
            share = self.warmup_share
        return shaped_lr(self.kind, self.peak, self.end, self.power, self.decay_share, done, share, warm_done,
                         in_warmup)

    def get_config(self):
        return {"peak": self.peak, "warmup_share": self.warmup_share, "kind": self.kind, "end": self.end,
                "power": self.power, "decay_share": self.decay_share, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="bertpipe")
class FusedAdamW(keras.optimizers.AdamW):
    """keras AdamW with each variable's update done in one pass over its memory.

    Same math, slots, checkpoint layout and weight decay as `keras.optimizers.AdamW`
    (a test checks equal results). Keras runs about ten element-wise ops per
    variable, plus a separate decay pass (`var -= var * wd * lr`) over every
    decayed matrix. Here a variable without decay gets TF's fused
    `ResourceApplyAdam` kernel, and one with decay gets one XLA kernel that decays
    and updates it (the 30,522 x 256 embedding table: 5.1 ms against 6.3 ms for
    decay + ResourceApplyAdam; +1-2% on the bench_pretrain bf16 step, A/B in one
    process). ResourceApplyAdam alone cut the optimizer's share of a CPU step
    about 3x against Keras' ops (40 -> 13 ms for 4 layers / hidden 256 / 30k
    vocab), which matters most for the short packed batches of fine-tuning.
    TensorFlow only.
    """

    def _apply_weight_decay(self, variables):  # compat.WEIGHT_DECAY_HOOK, a private Keras method
        if self.amsgrad:
            super()._apply_weight_decay(variables)
        # else: applied in update_step, in the same pass as the Adam update

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        # Handles, not variable objects: under a strategy, `.handle` is this device's copy, while a
        # distributed variable passed into a tf.function resolves to its primary copy on every device.
        var, m, v = (_tf_variable(x).handle for x in (variable, *compat.adam_slots(self, variable)))
        beta1_power = tf.pow(tf.cast(self.beta_1, dtype), step)
        beta2_power = tf.pow(tf.cast(self.beta_2, dtype), step)
        lr, gradient = tf.cast(learning_rate, dtype), tf.cast(gradient, dtype)
        if self.weight_decay and compat.uses_weight_decay(self, variable):
            _decayed_adam(var, m, v, gradient, lr, tf.cast(self.weight_decay, dtype), beta1_power, beta2_power,
                          float(self.beta_1), float(self.beta_2), float(self.epsilon))
        else:
            tf.raw_ops.ResourceApplyAdam(
                var=var, m=m, v=v, beta1_power=beta1_power, beta2_power=beta2_power, lr=lr,
                beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
                epsilon=tf.cast(self.epsilon, dtype), grad=gradient)


@compiled
def _decayed_adam(var, m, v, grad, lr, weight_decay, beta1_power, beta2_power, beta1, beta2, epsilon):
    """Keras AdamW's step for one variable as one XLA kernel: decay, then Adam with the
    bias-corrected rate. var, m, v are resource handles; beta1, beta2 and epsilon are
    Python floats (constants)."""
    value, m_old, v_old = (tf.raw_ops.ReadVariableOp(resource=h, dtype=grad.dtype) for h in (var, m, v))
    m_new = m_old + (grad - m_old) * (1.0 - beta1)
    v_new = v_old + (grad * grad - v_old) * (1.0 - beta2)
    alpha = lr * tf.sqrt(1.0 - beta2_power) / (1.0 - beta1_power)
    tf.raw_ops.AssignVariableOp(resource=var, value=value - value * weight_decay * lr
                                - (m_new * alpha) / (tf.sqrt(v_new) + epsilon))
    tf.raw_ops.AssignVariableOp(resource=m, value=m_new)
    tf.raw_ops.AssignVariableOp(resource=v, value=v_new)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable  # this device's copy under a strategy


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return int(round(cfg.warmup_ratio * total_steps))


def make_schedule(cfg: TrainConfig, total_steps: int | None):
    """WarmupDecay over `total_steps`; None (a budget): BudgetSchedule over the budget's share."""
    if total_steps is None:
        return BudgetSchedule(cfg.learning_rate, cfg.warmup_ratio, cfg.schedule, decay_share=cfg.decay_ratio,
                              warmup_steps=cfg.warmup_steps)
    return WarmupDecay(cfg.learning_rate, warmup_steps(cfg, total_steps), total_steps, cfg.schedule,
                       decay_share=cfg.decay_ratio)


def no_decay(variable) -> bool:
    """True for LayerNorm scales/offsets and biases.

    Every such variable is 1-D and every weight matrix / embedding table is at
    least 2-D, so the rank is a rule that does not depend on how a layer names
    its variables (keras: gamma/beta/bias; converted checkpoints: LayerNorm/...).
    """
    return len(variable.shape) <= 1


def build_optimizer(cfg: TrainConfig, total_steps: int | None, variables, *, loss_scale: bool = False,
                    schedule=None):
    """AdamW or LAMB with the warmup schedule (`schedule`, default `make_schedule(cfg,
    total_steps)`); `variables` are the model's trainable variables (needed to exclude
    LayerNorm/biases from weight decay before the optimizer is built). `loss_scale`
    wraps it in a `LossScaleOptimizer` (mixed_float16)."""
    schedule = schedule if schedule is not None else make_schedule(cfg, total_steps)
    kwargs = dict(learning_rate=schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                  weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        opt = FusedAdamW(**kwargs)
    else:
        # Keras' Lamb applies weight decay decoupled (base optimizer), outside
        # the trust ratio; the LAMB paper folds it into the update. Close enough
        # at BERT's 0.01 and it keeps one weight-decay rule for both optimizers.
        opt = keras.optimizers.Lamb(**kwargs)
    if cfg.weight_decay:
        opt.exclude_from_weight_decay(var_list=[v for v in variables if no_decay(v)])
    if loss_scale:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def inner_optimizer(opt):
    return getattr(opt, "inner_optimizer", opt)


def current_lr(opt) -> float:
    inner = inner_optimizer(opt)
    lr = inner.learning_rate
    return float(keras.ops.convert_to_numpy(lr))
