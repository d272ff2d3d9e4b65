"""One custom training loop for every tf.distribute strategy.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras
#20585), so training runs its own loop, as TF Model Garden's Orbit does: a
`tf.function` step calls `strategy.run` on a per-replica step over a
distributed dataset. The same loop serves the default strategy, Mirrored,
MultiWorkerMirrored and TPU, and fine-tuning reuses it with another `loss_fn`.

Per replica, a step takes `accumulation_steps` micro-batches (stacked in one
dataset batch), sums their gradients in a `tf.range` loop (only one micro-batch
of activations is alive at a time), all-reduces across replicas, clips by the
global norm of the summed gradient, then applies once. Each replica's loss is
divided by replicas x accumulation so the sum over all of them is the mean.

XLA (`jit_compile`, `distribute.use_xla`): on one device the whole per-replica step
(forward, backward, accumulation loop, clipping, optimizer update) is one XLA
program, what TPU requires (static shapes, no host ops in the step); TPUStrategy
compiles `strategy.run`'s function whole by itself. Under Mirrored and
MultiWorkerMirrored the all-reduces are `merge_call`s that TensorFlow cannot put
inside a nested XLA function (it can only on all-GPU devices, untested here), so
there XLA compiles forward, backward and the accumulation loop, and the all-reduce,
clipping and update run outside (`xla_scope`).

A checkpoint holds everything a run depends on, so a resumed run is the run it
would have been: model, optimizer, step, the training seconds spent, the key of
the dropout masks (`fused.step_seeds`: each step's masks are a function of the
step) and the input's position (a tf.data iterator checkpoint: shuffle buffer,
file offsets, packing window; the input is deterministic under its seed,
`data.make_dataset`). The run's length is a step count or a time budget
(`run_clock.py`); a bound schedule (`optimization.WarmupDecay` /
`BudgetSchedule`) reads this trainer's step and progress instead of the
optimizer's iteration count, so a second pretraining phase, whose optimizer
carries on from the first, runs its own schedule from its own step 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable

import keras
import tensorflow as tf

from bert_keras import distribute, fused
from bert_keras.optimization import current_lr
from bert_keras.run_clock import RunClock
from pipeline.contract import atomic
from pipeline.contract.errors import ContractError, UserError

_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()

LossFn = Callable[[dict, dict], tuple[tf.Tensor, dict]]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    clip_norm: float | None = 1.0
    accumulation_steps: int = 1
    jit_compile: bool | str = False  # True, False or "auto" (`distribute.use_xla`)
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3

    @classmethod
    def from_config(cls, cfg) -> LoopSettings:
        return cls(cfg.clip_norm, cfg.accumulation_steps, cfg.jit_compile, cfg.log_every, cfg.checkpoint_every,
                   cfg.keep_checkpoints)


@dataclasses.dataclass
class TrainResult:
    step: int
    resumed_from: int
    metrics: dict[str, float]  # last logged metrics
    history: list[dict[str, float]]  # every logged line, across restarts
    checkpoint: str | None
    seconds: float  # wall time of this call
    sequences_per_second: float
    train_seconds: float = 0.0  # training time of the whole run, before a resume too, evaluation excluded


class Trainer:
    """Holds model, optimizer, step counter and their checkpoint.

    Build the model (call it once) and the optimizer inside `strategy.scope()`
    before constructing the trainer. `out_dir` gets `checkpoints/`,
    `tensorboard/` and `history.jsonl`, on any filesystem TensorFlow and `atomic` know
    (local, gs://, ...).
    """

    def __init__(self, model: keras.Model, loss_fn: LossFn, optimizer, strategy: tf.distribute.Strategy,
                 out_dir: str, settings: LoopSettings = LoopSettings(),
                 on_log: Callable[[int, dict], None] | None = None, log_fn: Callable[[str], None] = print,
                 schedule=None, seed: int = 0):
        self.model, self.loss_fn, self.optimizer, self.strategy = model, loss_fn, optimizer, strategy
        self.settings, self.on_log, self.log_fn = settings, on_log, log_fn
        self.out_dir = out_dir
        self.chief = distribute.is_chief(strategy)
        self.replicas = strategy.num_replicas_in_sync
        self.loss_scale = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.progress = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="progress")
            self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
            self.dropout_key = tf.Variable(tf.constant([seed, 0x5EED], tf.int64), trainable=False, name="dropout_key")
            # Build optimizer slots now so a restore fills them instead of deferring.
            optimizer.build(model.trainable_variables)
        if schedule is not None:
            schedule.bind(step=self.step, progress=self.progress)
        self._state = tf.train.Checkpoint(train_seconds=self.train_seconds, dropout_key=self.dropout_key)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step, state=self._state)
        # MultiWorkerMirrored: every worker must save (it is collective), but only
        # the chief writes the real directory; the others keep their own copy, which
        # holds their own input position for a resume.
        ckpt_dir = os.path.join(out_dir, "checkpoints")
        if not self.chief:
            ckpt_dir = os.path.join(out_dir, f".worker-{distribute.worker_id(strategy)}-checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=settings.keep_checkpoints)
        tb_dir = os.path.join(out_dir, "tensorboard") if self.chief else None
        self.writer = tf.summary.create_file_writer(tb_dir) if tb_dir else tf.summary.create_noop_writer()
        self._train_step = None
        self._eval_step = None
        self._restored = None
        self.clock: RunClock | None = None
        # A time budget's progress differs a little between workers' clocks: they agree
        # on the mean, so every worker applies the same learning rate and stops together.
        self._agree = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        # "step": one XLA program per replica step; "grads": forward, backward and accumulation
        # only (the all-reduces are merge_calls); None: no XLA beyond the fused kernels.
        self.xla_scope = distribute.xla_scope(distribute.use_xla(settings.jit_compile, strategy), strategy)
        self._grads = self._accumulated_grads
        if self.xla_scope == "grads":
            self._grads = tf.function(self._accumulated_grads, jit_compile=True)

    # ---- checkpoints ---------------------------------------------------------
    def restore(self) -> int:
        """Restore the latest checkpoint if there is one; return its step (0 if none)."""
        latest = self.manager.latest_checkpoint
        if latest and latest != self._restored:
            # Model, optimizer and step must all be there; the rest of the state is newer
            # than some checkpoints (an older bertpipe's resume keeps its defaults).
            tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step).read(
                latest).expect_partial().assert_existing_objects_matched()
            tf.train.Checkpoint(state=self._state).read(latest).expect_partial()
            self._restored = latest
        return int(self.step.numpy())

    def start_from(self, path: str) -> None:
        """Continue from another run's full state (a previous pretraining phase): its model
        and optimizer (moments and iteration count), not its step, clock or input position."""
        tf.train.Checkpoint(model=self.model, optimizer=self.optimizer).read(path).expect_partial() \
            .assert_existing_objects_matched()

    def save(self) -> str:
        if self.clock is not None:
            self.train_seconds.assign(self.clock.spent())
        return self.manager.save(checkpoint_number=int(self.step.numpy()))

    def _input(self, data, resumed: int):
        """An iterator over `data` at the run's position. Where tf.data can checkpoint it (one
        device: a plain tf.data iterator) its position is saved with every checkpoint and
        restored here; tf.distribute's own iterators (Mirrored, MultiWorkerMirrored, TPU)
        cannot be, so a resume re-reads its deterministic input up to the position instead."""
        iterator = iter(self.distribute(data))
        if isinstance(iterator, tf.data.Iterator):
            self.checkpoint.data = iterator
            if resumed:
                status = tf.train.Checkpoint(data=iterator).read(self.manager.latest_checkpoint).expect_partial()
                try:
                    status.assert_existing_objects_matched()
                except AssertionError:
                    self.log_fn("the checkpoint holds no input position (written by an older bertpipe): "
                                "the input starts again from the top of its shuffle")
            return iterator
        if not resumed:
            return iterator
        self.log_fn(f"input position: re-reading the input up to step {resumed} "
                    f"({type(self.strategy).__name__}'s iterators cannot be checkpointed)")
        if callable(data) and not isinstance(data, tf.data.Dataset):
            def skipped(ctx):  # each input pipeline feeds its worker's replicas one batch each per step
                return data(ctx).skip(resumed * (ctx.num_replicas_in_sync // ctx.num_input_pipelines))

            return iter(self.distribute(skipped))
        return iter(self.distribute(data.skip(resumed)))  # one global batch per step

    # ---- per-replica step ----------------------------------------------------
    def _micro_grads(self, batch, micro):
        scale = 1.0 / (self.replicas * self.settings.accumulation_steps)
        variables = self.model.trainable_variables
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        key = self.dropout_key
        for part in (self.optimizer.iterations, micro, replica):
            key = tf.random.experimental.stateless_fold_in(key, tf.cast(part, tf.int64))
        with tf.GradientTape() as tape, fused.step_seeds(key):
            outputs = self.model(batch, training=True)
            loss, metrics = self.loss_fn(batch, outputs)
            loss = tf.cast(loss, tf.float32)
            scaled = loss * scale
            if self.loss_scale:
                scaled = self.optimizer.scale_loss(scaled)
        # ZERO, not None, for variables the loss does not reach (e.g. the NSP head when a
        # loss uses MLM only): the accumulation, clipping and all-reduce need a tensor each.
        # (by hand: UnconnectedGradients.ZERO fails on Keras 3 variables, whose dtype is a string)
        grads = tape.gradient(scaled, variables)
        grads = [tf.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, variables, strict=True)]
        metrics = {k: tf.cast(v, tf.float32) for k, v in metrics.items()}
        return grads, loss, metrics

    def _replica_step(self, batch):
        grads, loss, metrics = self._grads(batch)
        grads = self._clip(grads)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=False))
        return loss, metrics

    def _accumulated_grads(self, batch):
        """Dense gradients summed over the step's micro-batches, their mean loss and metrics."""
        # Embedding gradients arrive as IndexedSlices with repeated indices (a token
        # or position used twice). Keras' Adam squares the slices' values before
        # summing duplicates (sum g_i^2, not (sum g_i)^2) and tf.clip_by_global_norm
        # measures the unsummed values, so both differ from the dense math; dense
        # gradients are correct, sum in the accumulation loop, and Adam touches
        # every row of its slots anyway.
        accum = self.settings.accumulation_steps
        compute = self._micro_grads
        if accum == 1:
            grads, loss, metrics = compute(batch, 0)
            grads = [tf.convert_to_tensor(g) for g in grads]
        else:
            # (accum * batch, ...) -> (accum, batch, ...): one micro-batch per iteration.
            micro = {k: tf.reshape(v, tf.concat([[accum, -1], tf.shape(v)[1:]], 0)) for k, v in batch.items()}
            grads, loss, metrics = compute({k: v[0] for k, v in micro.items()}, 0)
            grads = [tf.convert_to_tensor(g) for g in grads]
            for i in tf.range(1, accum):
                g_i, l_i, m_i = compute({k: v[i] for k, v in micro.items()}, i)
                grads = [g + tf.convert_to_tensor(gi) for g, gi in zip(grads, g_i, strict=False)]
                loss = loss + l_i
                metrics = {k: metrics[k] + m_i[k] for k in metrics}
            loss = loss / accum
            metrics = {k: v / accum for k, v in metrics.items()}
        return grads, loss, metrics

    def _clip(self, grads):
        clip = self.settings.clip_norm
        if not clip:
            return grads  # the optimizer sums them across replicas
        if self.replicas > 1:
            # Clip the *summed* gradient, as one device would; the optimizer's own
            # clipping would clip each replica's share before the sum.
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if self.loss_scale else None
        if scale is not None:
            grads = [g / scale for g in grads]
        grads, _ = tf.clip_by_global_norm(grads, clip)
        if scale is not None:
            grads = [g * scale for g in grads]
        if self.replicas > 1:
            # Already summed: the optimizer sums again across replicas, so hand it 1/replicas.
            grads = [g / self.replicas for g in grads]
        return grads

    def _build_train_step(self):
        mean = tf.distribute.ReduceOp.MEAN
        replica_step = self._replica_step
        if self.xla_scope == "step":
            replica_step = tf.function(self._replica_step, jit_compile=True)

        @tf.function
        def train_step(iterator, progress):
            if self._agree:
                progress = self.strategy.reduce(mean, self.strategy.run(tf.identity, args=(progress,)), axis=None)
            self.progress.assign(progress)
            batch = next(iterator)
            loss, metrics = self.strategy.run(replica_step, args=(batch,))
            metrics = {k: self.strategy.reduce(mean, v, axis=None) for k, v in metrics.items()}
            self.step.assign_add(1)
            return self.strategy.reduce(mean, loss, axis=None), metrics, progress

        return train_step

    def step_function(self):
        """The compiled step: `fn(iterator, progress) -> (loss, metrics, progress)`, one
        optimizer step per call over an iterator of `distribute(data)`; `progress` (a
        float32 tensor) is the bound schedule's position (benchmarks time the step alone)."""
        self._train_step = self._train_step or self._build_train_step()
        return self._train_step

    # ---- the loop ------------------------------------------------------------
    def distribute(self, data):
        """`data` is a tf.data.Dataset of global batches, or a function
        `input_context -> per-replica-batched dataset` (each worker reads its own shards)."""
        if callable(data) and not isinstance(data, tf.data.Dataset):
            return self.strategy.distribute_datasets_from_function(data)
        return self.strategy.experimental_distribute_dataset(data)

    def fit(self, data, steps: int | None, *, rows_per_step: int, budget_seconds: float | None = None,
            eval_fn: Callable[[], dict] | None = None, eval_every: int | None = None,
            eval_every_seconds: float | None = None,
            data_error: Callable[[Exception], str] | None = None) -> TrainResult:
        """Train until `steps` optimizer steps are done, or `budget_seconds` of training
        time are spent (resuming from the latest checkpoint), checkpointing every
        `checkpoint_every` steps and at the end. `rows_per_step` is the global batch
        in rows (for seq/s). `eval_fn` runs every `eval_every` steps or every
        `eval_every_seconds` of training time, outside the training clock.
        `data_error(err)` words a corrupt-input error as one line."""
        resumed = self.restore()
        history = self._read_history(resumed)
        if resumed:
            self.log_fn(f"resumed from checkpoint at step {resumed} ({self.manager.latest_checkpoint})")
        self.clock = clock = RunClock(steps, budget_seconds, float(self.train_seconds.numpy()))
        if clock.finished(resumed):
            return TrainResult(resumed, resumed, history[-1] if history else {}, history,
                               self.manager.latest_checkpoint, 0.0, 0.0, clock.spent_before)
        iterator = self._input(data, resumed)
        train_step = self.step_function()
        s = self.settings
        start = time.perf_counter()
        window_start, window_steps, last, sums = start, 0, {}, {}
        last_eval = clock.spent()
        step = resumed
        while True:
            began = time.perf_counter()
            try:
                loss_t, metrics_t, used = train_step(iterator, tf.constant(clock.progress(step), tf.float32))
            except tf.errors.DataLossError as err:
                reason = data_error(err) if data_error else f"training data is corrupt ({_first_line(err)})"
                raise ContractError(f"{reason}; training stopped at step {step}, the last checkpoint "
                                    f"({self.manager.latest_checkpoint or 'none yet'}) is kept") from None
            step += 1
            window_steps += 1
            loss = float(loss_t)
            clock.step_took(time.perf_counter() - began)
            final = step >= steps if steps is not None else float(used) >= 1.0
            sums["loss"] = sums.get("loss", 0.0) + loss
            for k, v in metrics_t.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if not math.isfinite(loss):
                kept = self.manager.latest_checkpoint
                raise UserError(
                    f"training loss became {loss} at step {step}: stopped; the last good checkpoint "
                    f"({kept or 'none yet'}) is kept. Lower the learning rate or check the input data"
                )
            if step % s.log_every == 0 or final:
                now = time.perf_counter()
                # Means over the steps since the last line, not one noisy step.
                last = {k: v / window_steps for k, v in sums.items()}
                last.update(sequences_per_second=window_steps * rows_per_step / max(now - window_start, 1e-9),
                            learning_rate=current_lr(self.optimizer), step=step)
                if budget_seconds is not None:
                    last["train_seconds"] = clock.spent()
                window_start, window_steps, sums = now, 0, {}
                self._log(step, last, history)
            due = (eval_every and step % eval_every == 0) or (
                eval_every_seconds and clock.spent() - last_eval >= eval_every_seconds)
            if eval_fn is not None and due:
                last_eval, paused = clock.spent(), clock.eval_seconds
                with clock.paused():
                    scores = {f"eval_{k}": v for k, v in eval_fn().items()}
                window_start += clock.eval_seconds - paused  # seq/s counts training time only
                self._log(step, {**scores, "train_seconds": last_eval, "eval_seconds": clock.eval_seconds}, None)
            if step % s.checkpoint_every == 0 or final:
                self.save()
            if final:
                break
        seconds = time.perf_counter() - start
        # The training time the last checkpoint holds (what a resume continues from): the final
        # checkpoint's own write cannot be in it, so it is not in the reported figure either.
        return TrainResult(step, resumed, last, history, self.manager.latest_checkpoint, seconds,
                           (step - resumed) * rows_per_step / max(seconds - clock.eval_seconds, 1e-9),
                           float(self.train_seconds.numpy()))

    def _log(self, step: int, metrics: dict, history: list | None) -> None:
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "step")
        self.log_fn(f"step {step}: {shown}")
        with self.writer.as_default(step=step):
            for k, v in metrics.items():
                if k != "step":
                    # tf.summary.scalar lives in the tensorboard package (not a TF
                    # dependency since 2.20); the core write op with the scalars
                    # plugin tag writes the same event TensorBoard reads.
                    tf.summary.write(k, tf.constant(float(v), tf.float32), metadata=_SCALAR_METADATA)
        self.writer.flush()
        if history is not None:
            history.append(metrics)
            if self.chief:
                atomic.append_text(atomic.join(self.out_dir, "history.jsonl"), json.dumps(metrics) + "\n")
        if self.on_log is not None and self.chief:
            self.on_log(step, metrics)

    def _read_history(self, resumed: int) -> list[dict]:
        return read_step_log(atomic.join(self.out_dir, "history.jsonl"), resumed, self.chief)

    # ---- evaluation ----------------------------------------------------------
    def evaluate(self, data, steps: int | None = None) -> dict[str, float]:
        """Mean of `loss_fn`'s loss and metrics over `steps` batches (all if None)."""
        if self._eval_step is None:
            def replica_eval(batch):
                loss, metrics = self.loss_fn(batch, self.model(batch, training=False))
                return {"loss": tf.cast(loss, tf.float32), **{k: tf.cast(v, tf.float32) for k, v in metrics.items()}}

            @tf.function
            def eval_step(batch):
                out = self.strategy.run(replica_eval, args=(batch,))
                return {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in out.items()}

            self._eval_step = eval_step
        totals: dict[str, float] = {}
        n = 0
        for batch in self.distribute(data):
            out = self._eval_step(batch)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            n += 1
            if steps is not None and n >= steps:
                break
        return {k: v / max(n, 1) for k, v in totals.items()}

    def close(self) -> None:
        self.writer.close()


def read_step_log(path: str, resumed: int, chief: bool) -> list[dict]:
    """The JSON lines of a step log (history, held-out evaluations) up to the restored step;
    later ones (after the last checkpoint of a killed run) are dropped, and the chief rewrites
    the file without them, so curves have no duplicates."""
    if not atomic.exists(path):
        return []
    rows = [json.loads(line) for line in atomic.read_text(path).splitlines() if line.strip().endswith("}")]
    rows = [r for r in rows if r.get("step", 0) <= resumed]
    if chief:
        atomic.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _first_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__
