"""Figures of bench_pretraining_value.py from what its runs left in WORK: rows, targets and the held-out PNG.

Reads only files (each bertpipe run's `finetune/<task>/finetune_result.json` and `pretrain/pretrain_result.json`,
keras-hub's `keras_hub/pretrain_result.json`), so a finished bench can be summarized again without training.
"""

from __future__ import annotations

import json
import os

# start -> (the runs' work directories, first found wins; which result of their finetune stage). TF-IDF is scored
# on the same splits by every run's finetune stage (raw text, no vocab): the first finished one gives it.
SOURCES = {"tfidf": (("classic", "best", "minilm"), "tfidf"), "random": (("classic",), "random_init"),
           "classic": (("classic",), "main"), "best": (("best",), "main"), "keras_hub": (("keras_hub",), "main"),
           "minilm": (("minilm",), "main"), "minilm_dapt": (("minilm_dapt",), "main"),
           "modernbert": (("modernbert",), "main")}
PRETRAINED = {"classic": "classic", "best": "best", "keras_hub": "keras_hub", "minilm_dapt": "minilm_dapt",
              "modernbert": "modernbert"}


def _read(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def curve_of(work: str, start: str) -> dict | None:
    """A pretraining run's held-out MLM loss: {"tokens", "seconds", "loss", "final_loss", ...}."""
    run = os.path.join(work, PRETRAINED[start])
    result = _read(os.path.join(run, "pretrain_result.json")) or _read(os.path.join(run, "pretrain", "pretrain_result.json"))
    if result is None:
        return None
    tokens_per_step = result.get("global_batch_size", 0) * result.get("seq_length", 0)
    points = [h for h in result.get("heldout", []) if "eval_mlm_loss" in h]
    return {"tokens": [h["step"] * tokens_per_step for h in points], "seconds": [h["train_seconds"] for h in points],
            "loss": [h["eval_mlm_loss"] for h in points], "final_loss": result.get("eval_mlm_loss"),
            "final_tokens": result["step"] * tokens_per_step, "train_seconds": result.get("train_seconds"),
            "steps": result["step"], "objectives": result.get("objectives"),
            "sequences_per_second": result.get("train_sequences_per_second")}


def _spread(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0


def finished_repeats(work: str, run: str, task: str, which: str) -> dict | None:
    """A finetune stage still running: its finished repeats (runs/<start>-seed<k>/run.json), as a partial result."""
    runs_dir = os.path.join(work, run, "finetune", task, "runs")
    if which == "tfidf" or not os.path.isdir(runs_dir):
        return None
    done = [_read(os.path.join(runs_dir, d, "run.json")) for d in sorted(os.listdir(runs_dir)) if d.startswith(which + "-")]
    done = [r for r in done if r]
    if not done:
        return None
    test, dev = [r["test"]["accuracy"] for r in done], [r["dev"]["accuracy"] for r in done if r["dev"]]
    return {"metric": "accuracy", "chosen_by": done[0]["chosen_by"], "wall_seconds": None, "partial": True,
            "test": {which: dict(zip(("mean", "std"), _spread(test), strict=True)) | {"runs": test}},
            "dev": {which: {"mean": _spread(dev)[0]}} if dev else {}}


def tfidf_on_prepared_splits(work: str, run: str, task: str, seeds: int = 3) -> dict | None:
    """TF-IDF while no finetune stage has finished: the stage's own baseline function on the train / dev / test
    rows that stage already split (raw text: the same for every run's vocab)."""
    data_dir = os.path.join(work, run, "finetune", task, "data")
    if not all(os.path.exists(os.path.join(data_dir, s, "manifest.json")) for s in ("train", "dev", "test")):
        return None
    from bert_keras.baselines import tfidf_baseline
    from bert_keras.tasks.base import load_examples
    from pipeline.contract import schema

    labels = schema.read_manifest(os.path.join(data_dir, "train")).labels
    index = {name: i for i, name in enumerate(labels)}
    splits = []
    for split in ("train", "dev", "test"):
        rows = [r for _, r in sorted(load_examples(os.path.join(data_dir, split)).items())]
        splits += [[r["text"] for r in rows], [index[r["label"]] for r in rows]]
    done = tfidf_baseline(*splits, labels, "accuracy", list(range(seeds)))
    test = [r.test["accuracy"] for r in done]
    return {"metric": "accuracy", "chosen_by": done[0].chosen_by, "wall_seconds": None,
            "test": {"tfidf": dict(zip(("mean", "std"), _spread(test), strict=True)) | {"runs": test}},
            "dev": {"tfidf": {"mean": _spread([r.dev["accuracy"] for r in done])[0]}}}


def _result(work: str, runs: tuple[str, ...], task: str, which: str) -> tuple[str, dict] | None:
    for run in runs:
        result = _read(os.path.join(work, run, "finetune", task, "finetune_result.json"))
        if result is not None and which in result["test"]:
            return run, result
    for run in runs:
        partial = finished_repeats(work, run, task, which) if which != "tfidf" else \
            tfidf_on_prepared_splits(work, run, task)
        if partial is not None:
            return run, partial
    return None


def summarize(work: str, task: str, walls: dict) -> tuple[list[dict], dict[str, dict]]:
    """(rows: one per start that has a result, curves: start -> held-out curve)."""
    rows = []
    # Every pretraining run that finished has its held-out curve, fine-tuned yet or not.
    curves = {start: c for start in PRETRAINED if (c := curve_of(work, start)) is not None}
    for start, (runs, which) in SOURCES.items():
        found = _result(work, runs, task, which)
        if found is None:
            continue
        run, result = found
        spread = result["test"][which]
        row = {"start": start, "task": task, "setting": "train_1k", "metric": f"test {result['metric']} (%)",
               "mean": round(100 * spread["mean"], 2), "std": round(100 * spread["std"], 2),
               "runs": [round(100 * v, 2) for v in spread["runs"]], "chosen_by": result["chosen_by"],
               "dev_mean": round(100 * result["dev"][which]["mean"], 2) if which in result.get("dev", {}) else None,
               "finetune_wall_seconds": result["wall_seconds"], "run_wall_seconds": walls.get(run),
               "complete": not result.get("partial", False)}
        if start in curves:
            curve = curves[start]
            if curve is not None:
                row.update(pretrain_tokens=curve["final_tokens"], pretrain_train_seconds=round(curve["train_seconds"], 1),
                           heldout_mlm_loss=round(curve["final_loss"], 4) if curve["final_loss"] else None,
                           pretrain_seq_per_s=round(curve["sequences_per_second"] or 0, 1))
        rows.append(row)
    return rows, curves


def _first_reach(curve: dict, axis: str, level: float) -> float | None:
    """Where on `axis` the held-out loss first reaches `level`, linear between evaluations; None: never."""
    xs, ys = [0.0, *curve[axis]], [None, *curve["loss"]]
    for i in range(1, len(xs)):
        if ys[i] <= level:
            if ys[i - 1] is None or ys[i - 1] <= level:
                return xs[i]
            return xs[i - 1] + (xs[i] - xs[i - 1]) * (ys[i - 1] - level) / (ys[i - 1] - ys[i])
    return None


def time_to_classic_loss(curves: dict[str, dict], start: str = "best", level: float | None = None) -> dict | None:
    """Tokens and training seconds `start`'s run needs to reach the classic's final held-out MLM loss, over the
    classic's own (its whole run). `level`: that loss measured on `start`'s held-out set (heldout_rescore.py; the
    classic's own curve is on its pair-layout set); default: the classic's own figure. None until both ran."""
    if "classic" not in curves or start not in curves or not curves["classic"]["final_loss"]:
        return None
    classic, other = curves["classic"], curves[start]
    level = classic["final_loss"] if level is None else level
    out = {"classic_final_loss": level, "classic_own_set_loss": classic["final_loss"], "final_loss": other["final_loss"]}
    for axis, total in (("tokens", classic["final_tokens"]), ("seconds", classic["train_seconds"])):
        reach = _first_reach(other, axis, level)
        out[f"{axis}_ratio"] = round(reach / total, 3) if reach is not None else None
    # Below the level at its first evaluation: the run got there sooner still, the ratio is an upper bound.
    out["upper_bound"] = bool(other["loss"]) and other["loss"][0] <= level
    return out


def targets_of(rows: list[dict], curves: dict[str, dict], classic_level: float | None = None) -> list[dict]:
    from results import target

    by = {r["start"]: r for r in rows}
    out = []
    if "best" in by and "random" in by:
        gap = round(by["best"]["mean"] - by["random"]["mean"], 2)
        floor = max(5.0, round(2 * max(by["best"]["std"], by["random"]["std"]), 2))
        out.append(target("pretrained_vs_random_points", gap, f">= {floor}",
                          what="best recipe minus random init, test points (mean of repeats, label-scarce task)"))
    if "best" in by and "tfidf" in by:
        out.append(target("pretrained_vs_tfidf_points", round(by["best"]["mean"] - by["tfidf"]["mean"], 2), "> 0",
                          what="best recipe minus TF-IDF + LR, test points"))
    reach = time_to_classic_loss(curves, "best", classic_level)
    if reach is not None:
        # Tokens, not seconds: on a shared machine seconds measure the neighbours too (seconds ratio in the notes).
        value = reach["tokens_ratio"] if reach["tokens_ratio"] is not None else "not reached"
        out.append(target("recipe_time_to_classic_loss_ratio", value, "<= 0.5",
                          what=f"best recipe's tokens to the classic's final held-out MLM loss "
                               f"({reach['classic_final_loss']:.3f} on the best run's held-out windows, 15% masks; "
                               f"{reach['classic_own_set_loss']:.3f} on its own pair-layout set) / the classic's; "
                               f"training-seconds ratio {reach['seconds_ratio']}"))
    if "minilm" in by and "minilm_dapt" in by:
        out.append(target("dapt_vs_minilm_points", round(by["minilm_dapt"]["mean"] - by["minilm"]["mean"], 2), "> 0",
                          what="MiniLM after continued MLM on the in-domain text minus MiniLM, test points"))
    return out


def plot_heldout(curves: dict[str, dict], path: str) -> str | None:
    """Held-out MLM loss against training seconds and tokens, one line per pretraining run."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(11, 4.2))
    for start, curve in curves.items():
        by_time.plot(curve["seconds"], curve["loss"], "o-", ms=3, label=start)
        by_tokens.plot([t / 1e6 for t in curve["tokens"]], curve["loss"], "o-", ms=3, label=start)
    for ax, xlabel in ((by_time, "training seconds (shared 2-core machine: noisy)"), (by_tokens, "tokens (M)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out MLM loss (fixed documents, 15% masks)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Pretraining on the train presidents' speeches: held-out MLM loss")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
