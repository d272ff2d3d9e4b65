"""Knowledge distillation: a smaller student trained from a fine-tuned teacher (Hinton et al. 2015).

The student is the teacher's architecture with fewer transformer layers (same width,
heads and vocab, so the export is the same raw-text SavedModel). Its start (`init`):
- `first`: the teacher's embeddings, its first k blocks, pooler and head. Default, because
  block i+1 was trained on block i's output, so a prefix of the stack is a working network
  before any step; Sajjad et al. 2020 ("On the effect of dropping layers of pre-trained
  transformer models") found dropping the top layers the best of the layer-dropping choices;
- `spread`: k blocks evenly spaced over the teacher's (DistilBERT's "one layer out of two"
  when k is half the depth; Sanh et al. 2019), embeddings, pooler and head as above;
- `random`: a freshly initialized student.

The loss of one instance (teacher logits t, student logits s, label y, temperature T):

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, softmax(s))

T^2 keeps the soft term's gradient on the scale of the hard one as T changes (Hinton
et al., section 2). Both terms are means over the batch's real instances (CLS_WEIGHTS
when rows are packed), the hard one the task type's own loss (class weights included).
The teacher runs in inference mode inside the training step and gets no gradient.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bert_keras.task_models import LOGITS
from pipeline.contract.errors import UserError
from pipeline.contract.schema import CLS_WEIGHTS

TEACHER_LOGITS = "teacher_logits"
INITS = ("first", "spread", "random")


def select_layers(teacher_layers: int, student_layers: int, init: str) -> list[int]:
    """Which teacher block each student block starts from: `first` -> 0..k-1, `spread` -> evenly spaced."""
    if not 1 <= student_layers < teacher_layers:
        raise UserError(f"distill.layers is {student_layers} but the teacher has {teacher_layers} layers: "
                        f"a student needs between 1 and {teacher_layers - 1}")
    if init == "first":
        return list(range(student_layers))
    # spread: 6 -> 3 gives [0, 2, 4] (DistilBERT's every other layer), 6 -> 2 gives [0, 3], 12 -> 4 [0, 3, 6, 9]
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def student_encoder_spec(teacher_spec: dict, layers: int) -> dict:
    """The teacher encoder's Keras serialization with `layers` transformer blocks."""
    if "num_layers" not in teacher_spec.get("config", {}):
        raise UserError("distillation needs a BERT-family teacher (an encoder with num_layers)")
    return {**teacher_spec, "config": {**teacher_spec["config"], "num_layers": int(layers)}}


def copy_from_teacher(student, teacher, layers: list[int]) -> str:
    """Assign the teacher's weights to the built `student` task model; `layers[i]` feeds student block i.

    Embeddings, embedding norm, final norm and pooler come whole; then the head (every
    variable of the task model outside its encoder, in the same order). Returns what was copied, in words."""
    s_enc, t_enc = student.encoder, teacher.encoder
    if not hasattr(t_enc, "blocks"):
        raise UserError(f"distillation copies BERT blocks; the teacher's encoder is a {type(t_enc).__name__}")
    pairs = [(getattr(s_enc, name), getattr(t_enc, name))
             for name in ("token_embedding", "segment_embedding", "position_embedding", "embedding_norm", "pooler")]
    if getattr(s_enc, "final_norm", None) is not None:
        pairs.append((s_enc.final_norm, t_enc.final_norm))
    pairs += [(s_enc.blocks[i], t_enc.blocks[j]) for i, j in enumerate(layers)]
    for s_layer, t_layer in pairs:
        s_layer.set_weights(t_layer.get_weights())
    encoder_ids = {id(v) for v in s_enc.weights}
    teacher_ids = {id(v) for v in t_enc.weights}
    s_head = [v for v in student.weights if id(v) not in encoder_ids]
    t_head = [v for v in teacher.weights if id(v) not in teacher_ids]
    if [tuple(v.shape) for v in s_head] != [tuple(v.shape) for v in t_head]:
        raise UserError("the student's head does not match the teacher's: distill a task with its own labels")
    for s_var, t_var in zip(s_head, t_head, strict=True):
        s_var.assign(t_var)
    return f"teacher blocks {layers} of {len(t_enc.blocks)}, embeddings, pooler and head"


def build_student(kind, task, teacher_spec, distill, init: str, num_labels: int, dropout: float, sample,
                  fused_kernels: bool):
    """(student task model, `Distilled` model to train, what the student started from in words).

    `teacher_spec`: the fine-tuned task's `ExportSpec` (its architecture and chosen weights);
    `distill`: the task's `DistillConfig`; `init`: first, spread or random; `sample`: a batch
    that builds every layer. Call inside the strategy's scope."""
    from bert_keras.export_finetuned import rebuild_task_model
    from bert_keras.starting_weights import rebuild_encoder

    teacher = rebuild_task_model(teacher_spec)
    teacher_layers = int(teacher_spec.encoder["config"]["num_layers"])
    layers = select_layers(teacher_layers, distill.layers, "first" if init == "random" else init)
    spec = student_encoder_spec(teacher_spec.encoder, distill.layers)
    spec = {**spec, "config": {**spec["config"], "fused_kernels": fused_kernels}}
    student = kind.build_model(task, rebuild_encoder(spec), num_labels, dropout)
    student(sample, training=False)
    if init == "random":
        loaded = f"random init ({distill.layers} of the teacher's {teacher_layers} layers)"
    else:
        loaded = copy_from_teacher(student, teacher, layers)
    trained = Distilled(student, teacher, name="distilled")
    trained(sample, training=False)
    return student, trained, f"student of {teacher_spec.weights}: {loaded}"


class Distilled(keras.Model):
    """The student, with the frozen teacher's logits beside its own (`TEACHER_LOGITS`) for the loss.

    Only the student's variables are trainable; the teacher runs with training=False."""

    def __init__(self, student, teacher, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False

    def call(self, inputs, training=None):
        outputs = self.student(inputs, training=training)
        outputs = dict(outputs) if isinstance(outputs, dict) else {LOGITS: outputs}
        teacher = self.teacher(inputs, training=False)
        outputs[TEACHER_LOGITS] = tf.stop_gradient(teacher[LOGITS] if isinstance(teacher, dict) else teacher)
        return outputs


def _instances(logits, batch):
    """(batch, classes) or (batch, instances, classes) logits -> float32 (batch, instances, classes), real weights."""
    logits = tf.cast(logits, tf.float32)
    if logits.shape.rank == 2:  # long documents: one instance per row
        logits = logits[:, None, :]
    if CLS_WEIGHTS in batch:
        real = tf.cast(batch[CLS_WEIGHTS], tf.float32)  # (batch, instances)
    else:
        real = tf.ones(tf.shape(logits)[:2], tf.float32)
    return logits, real


def soft_target_loss(teacher_logits, student_logits, temperature: float, real=None):
    """T^2 * KL(softmax(t/T) || softmax(s/T)), the mean over real instances; logits (..., classes)."""
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    log_p, log_q = tf.nn.log_softmax(t, axis=-1), tf.nn.log_softmax(s, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)  # (...)
    real = tf.ones_like(kl) if real is None else tf.cast(real, tf.float32)
    return temperature**2 * tf.reduce_sum(kl * real) / tf.maximum(tf.reduce_sum(real), 1.0)


def distillation_loss(hard_loss, temperature: float, alpha: float):
    """The trainer's loss_fn: alpha * soft-target loss + (1 - alpha) * the task's own loss on the labels."""

    def loss_fn(batch, outputs):
        hard, metrics = hard_loss(batch, {k: v for k, v in outputs.items() if k != TEACHER_LOGITS})
        student, real = _instances(outputs[LOGITS], batch)
        teacher, _ = _instances(outputs[TEACHER_LOGITS], batch)
        soft = soft_target_loss(teacher, student, temperature, real)
        agree = tf.cast(tf.equal(tf.argmax(student, -1), tf.argmax(teacher, -1)), tf.float32)
        metrics = {**metrics, "soft_loss": soft, "hard_loss": tf.cast(hard, tf.float32),
                   "teacher_agreement": tf.reduce_sum(agree * real) / tf.maximum(tf.reduce_sum(real), 1.0)}
        return alpha * soft + (1.0 - alpha) * tf.cast(hard, tf.float32), metrics

    return loss_fn
