"""The two-stage distillation run behind `rla-convert distill RECIPE.yaml`.

Stage 1 (attention transfer): the teacher runs once per batch without gradients; hooks record what
each replaced attention module received and returned. Each new RLA/RDN layer is then called on the
same inputs, and only its new parameters (with ``stage1.lora``, stage 2's LoRA adapters too) learn to
match the teacher's output (relative MSE, every layer at once). Nothing is back-propagated through the
teacher or through the rest of the student.

Stage 2 (LoRA): peft LoRA on the converted layers' projections, the new gate parameters trained fully,
loss = kl_weight * KL(teacher || student) + ce_weight * next-token cross-entropy.

What is saved is only what is trained (a few MB): `checkpoints/step-N/` during a run, `final/` at the
end. Batches are a pure function of (seed, stage, step), and the optimiser, scheduler and RNG states
are checkpointed, so a resumed run follows the same loss trajectory as one that never stopped.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..errors import UserError
from .losses import kd_loss, relative_mse
from .recipe import DEFAULT_LORA_TARGETS, MLA_LORA_TARGETS, Recipe, recipe_yaml

STAGES = ("stage1", "stage2")
MAX_CONSECUTIVE_NONFINITE = 5
# Projections every converted layer takes from its source: stage 1 leaves them alone, LoRA adapts them.
REUSED_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", *MLA_LORA_TARGETS, "q_a_layernorm",
                      "kv_a_layernorm")  # MLA's projections and latent norms too


class DistillError(UserError):
    """A run that cannot go on (non-finite losses, a resume that does not match)."""


# ----------------------------------------------------------------------------------------------- data

class BatchOrder:
    """Sample indices for (stage, step, micro-batch): a fresh permutation per epoch, from the seed alone."""

    def __init__(self, n: int, seed: int, stage: int):
        self.n, self.seed, self.stage, self._perms = n, seed, stage, {}

    def indices(self, first: int, count: int) -> list[int]:
        out = []
        for j in range(first, first + count):
            epoch = j // self.n
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stage * 10_007 + epoch)
                self._perms = {epoch: torch.randperm(self.n, generator=g)}
            out.append(int(self._perms[epoch][j % self.n]))
        return out


def _batch(dataset, order: BatchOrder, step: int, micro: int, accum: int, batch_size: int, device):
    first = (step * accum + micro) * batch_size
    return torch.stack([dataset[i] for i in order.indices(first, batch_size)]).to(device)


# ------------------------------------------------------------------------------------- parameters

def converted_paths(student) -> list[str]:
    from ..layers import ResidualAttention

    return [name for name, m in student.named_modules() if isinstance(m, ResidualAttention)]


def new_parameter_names(student) -> list[str]:
    """Parameters of the converted layers that did not come from the source model's projections."""
    from ..layers import ResidualAttention

    names = []
    for path, module in student.named_modules():
        if not isinstance(module, ResidualAttention):
            continue
        reused = set(getattr(module, "reused_parameters", ())) or set(REUSED_PROJECTIONS)
        for pname, _ in module.named_parameters():
            if pname.split(".")[0] not in reused:
                names.append(f"{path}.{pname}")
    return names


def with_lora(student, recipe: Recipe):
    """The student wrapped in peft LoRA on its converted layers' projections, as stage 2 trains it."""
    from peft import LoraConfig, get_peft_model

    spec = recipe.stage2.lora
    layer_paths = "|".join(re.escape(p) for p in converted_paths(student))
    regex = rf"^({layer_paths})\.({'|'.join(spec.targets)})$"
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=regex)
    with warnings.catch_warnings():  # peft reads a property transformers 5.2x deprecates: not the user's to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(student, config)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise DistillError(f"checkpoint names parameters this model does not have (e.g. {missing[0]}): was it made by another recipe?")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))


# ----------------------------------------------------------------------------------- checkpoints

def _atomic_dir(target: Path, write) -> None:
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def save_checkpoint(run_dir: Path, stage: str, step: int, model, optimizer, scheduler, fingerprint: str) -> Path:
    from safetensors.torch import save_file

    target = run_dir / "checkpoints" / f"{stage}-step-{step:06d}"

    def write(tmp: Path):
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"stage": stage, "step": step, "recipe_fingerprint": fingerprint}))

    _atomic_dir(target, write)
    for old in sorted((run_dir / "checkpoints").glob(f"{stage}-step-*"))[:-2]:  # keep the last two
        shutil.rmtree(old)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("stage*-step-*"), key=lambda p: (p.name.split("-step-")[0], p.name))
    done = [p for p in found if (p / "state.json").is_file()]
    return done[-1] if done else None


# ------------------------------------------------------------------------------------ the run

class DistillRun:
    def __init__(self, recipe: Recipe, resume: bool = False, progress: bool = True, stop_after: int | None = None):
        self.recipe, self.resume, self.progress, self.stop_after = recipe, resume, progress, stop_after
        self.run_dir = Path(recipe.output)
        self.fingerprint = recipe_fingerprint(recipe)
        self.steps_this_run = 0
        self.peft_model = None  # the student with LoRA adapters, made by the first stage that trains them

    # -- setup ---------------------------------------------------------------------------------
    def setup(self):
        from ..checkpoints import load_checkpoint
        from ..data import PackedSequences, tokenize_documents

        r = self.recipe
        from ..data import iter_documents

        for source in (r.data.train, r.data.heldout):  # a wrong path fails before minutes of model loading
            if source is not None:
                next(iter_documents(source), None)
        self._check_run_dir()
        self.device = resolve_device(r.device, option="device:")
        if r.precision != "fp32" and self.device.type != "cuda":
            raise UserError(f"precision {r.precision} needs a CUDA device; on {self.device.type} use precision: fp32")
        torch.manual_seed(r.seed)
        # The student is the checkpoint at fp32, converted in place; the teacher is loaded a second time, in the
        # training precision (as a cast of the fp32 load would give it): the host holds one fp32 copy, not two (an 8B
        # model: 32 GB, not 64, where a copy of the loaded teacher took 64)
        base, self.tokenizer = load_checkpoint(r.model, dtype=torch.float32)
        max_len = getattr(base.config.get_text_config(), "max_position_embeddings", None)
        if max_len and r.data.seq_len > max_len:
            raise UserError(f"data.seq_len {r.data.seq_len} is over the model's maximum of {max_len} tokens")
        fraction = 0.0 if r.data.heldout else r.data.heldout_fraction
        streams = tokenize_documents(r.data.train, self.tokenizer, heldout_fraction=fraction, seed=r.data.split_seed,
                                     cache_dir=r.data.cache_dir, max_tokens=r.data.max_train_tokens, progress=self.progress)
        heldout = streams.heldout
        if r.data.heldout:
            heldout = tokenize_documents(r.data.heldout, self.tokenizer, cache_dir=r.data.cache_dir,
                                         progress=self.progress).train
        self.train_set = PackedSequences(streams.train, r.data.seq_len)
        if len(self.train_set) == 0:
            raise UserError(f"data.train {r.data.train}: fewer than seq_len={r.data.seq_len} + 1 training tokens")
        self.heldout_ids = torch.as_tensor(heldout[: r.eval.tokens].astype("int64"))
        if self.heldout_ids.numel() < r.data.seq_len:
            raise UserError(f"the held-out split has {self.heldout_ids.numel()} tokens, fewer than one window of "
                            f"data.seq_len={r.data.seq_len}: raise data.heldout_fraction or give data.heldout")
        self.student = self._convert(base)
        self.student.to(self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[r.precision]
        self.teacher, _ = load_checkpoint(r.model, dtype=dtype, with_tokenizer=False)
        self.teacher.to(self.device).eval().requires_grad_(False)
        # a factory: each use needs a fresh context manager
        self.autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype != torch.float32 else nullcontext
        # made only now that every check has passed: a run that failed to start leaves no directory behind
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"

    def _convert(self, base):
        from ..convert import convert_model

        result = convert_model(base, copy.deepcopy(self.recipe.conversion), progress=False)
        self.conversion = result.config
        return result.model

    def _check_run_dir(self):
        state_files = list(self.run_dir.glob("checkpoints/*/state.json"))
        if self.resume:
            if (self.run_dir / "final").is_dir():
                raise UserError(f"--resume: {self.run_dir} is a finished run (final/ is written); export it with "
                                f"'rla-convert export {self.run_dir} --out DIR', or choose another output to train "
                                "again")
            if not state_files:
                raise UserError(f"--resume: {self.run_dir} has no checkpoint to resume from")
            for f in state_files:
                if json.loads(f.read_text()).get("recipe_fingerprint") != self.fingerprint:
                    raise UserError(f"--resume: {self.run_dir} holds a run of another recipe (its checkpoints do not "
                                    "match this recipe's model, conversion, data and stage settings)")
        elif self.run_dir.exists() and (state_files or (self.run_dir / "final").exists()):
            raise UserError(f"output {self.run_dir} already holds a run: pass --resume to continue it, or choose another output")
        # the directory itself is made after the other checks (setup): that it can be, checked now
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"output {self.run_dir} exists and is not a directory")
        ancestor = next(p for p in (self.run_dir, *self.run_dir.parents) if p.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(f"output {self.run_dir}: cannot write under {ancestor}")

    # -- logging -------------------------------------------------------------------------------
    def log(self, **row):
        row["time"] = round(time.time(), 3)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def _trim_log(self, stage: str, step: int):
        """On resume, drop rows the interrupted run wrote after the checkpoint we restart from."""
        if not self.metrics_path.exists():
            return
        order = {s: i for i, s in enumerate(("setup", *STAGES, "final"))}
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            row = json.loads(line)
            pos = (order.get(row.get("stage"), 0), row.get("step", 0))
            if pos <= (order[stage], step):
                keep.append(line)
        self.metrics_path.write_text("".join(k + "\n" for k in keep))

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def heldout_ppl(self, model) -> float:
        from ..eval import perplexity

        model.eval()
        with self.autocast():
            result = perplexity(model, self.heldout_ids, window=self.recipe.data.seq_len,
                                batch_size=self.recipe.stage2.batch_size, progress=False)
        model.train()
        return result["perplexity"]

    # -- stages --------------------------------------------------------------------------------
    def run(self) -> dict:
        self.setup()
        start = None
        if self.resume:
            ckpt = latest_checkpoint(self.run_dir)
            state = json.loads((ckpt / "state.json").read_text())
            start = (state["stage"], state["step"], ckpt)
            self._trim_log(state["stage"], state["step"])
        else:
            self.log(stage="setup", step=0, teacher_ppl=self.heldout_ppl(self.teacher),
                     student_ppl=self.heldout_ppl(self.student), train_sequences=len(self.train_set),
                     heldout_tokens=int(self.heldout_ids.numel()))
        summary_rows = [json.loads(x) for x in self.metrics_path.read_text().splitlines()]
        self.teacher_ppl = next(r["teacher_ppl"] for r in summary_rows if r["stage"] == "setup")

        if start is None or start[0] == "stage1":
            if not self.stage1(resume_from=start):
                return {"stopped": True}
            start = None
        else:
            if self.recipe.stage1.lora:  # stage 1 saved adapters: they need their modules to load into
                self._lora_model()
            load_trainable_state(self.student, _load_safetensors(self.run_dir / "checkpoints" / "stage1-final.safetensors"))
        if not self.stage2(resume_from=start):
            return {"stopped": True}
        return self.finish()

    def _stage_loop(self, stage: str, spec, model, optimizer, scheduler, loss_fn, resume_from) -> bool:
        """Optimiser steps for one stage. False if stopped early by --stop-after (after a checkpoint)."""
        r = self.recipe
        order = BatchOrder(len(self.train_set), r.seed, STAGES.index(stage))
        step = 0
        if resume_from is not None and resume_from[0] == stage:
            _, step, ckpt = resume_from
            load_trainable_state(model, _load_safetensors(ckpt / "trainable.safetensors"))
            extra = torch.load(ckpt / "optimizer.pt", weights_only=False)
            optimizer.load_state_dict(extra["optimizer"])
            scheduler.load_state_dict(extra["scheduler"])
            torch.set_rng_state(extra["rng"])
        tokens_per_step = spec.batch_size * spec.grad_accum * r.data.seq_len
        bar = tqdm(total=spec.steps, initial=step, desc=stage, unit="step", disable=not self.progress)
        nonfinite = 0
        model.train()
        while step < spec.steps:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            logs, finite = {}, True
            for micro in range(spec.grad_accum):
                batch = _batch(self.train_set, order, step, micro, spec.grad_accum, spec.batch_size, self.device)
                loss, parts = loss_fn(batch)
                if not torch.isfinite(loss):
                    finite = False
                    break
                (loss / spec.grad_accum).backward()
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / spec.grad_accum
            if not finite:
                nonfinite += 1
                optimizer.zero_grad(set_to_none=True)
                self.log(stage=stage, step=step, skipped="non-finite loss")
                if nonfinite >= MAX_CONSECUTIVE_NONFINITE:
                    raise DistillError(f"{stage}: {nonfinite} consecutive steps with a non-finite loss at step {step}; "
                                       f"stopped. The last good checkpoint is in {self.run_dir / 'checkpoints'}; "
                                       f"lower {stage}.lr or check the data")
                step += 1  # the skipped batch is not retried: the trajectory stays a function of the step
                bar.update(1)
                continue
            nonfinite = 0
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            self.steps_this_run += 1
            dt = time.perf_counter() - t0
            row = {"stage": stage, "step": step, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_step / dt, **logs}
            if step % r.log_every == 0 or step == spec.steps:
                self.log(**row)
            if r.eval.every and step % r.eval.every == 0 and step < spec.steps:
                self.log(stage=stage, step=step, student_ppl=self.heldout_ppl(self._eval_model()))
            bar.set_postfix(loss=f"{logs.get('loss', 0):.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if step % r.checkpoint_every == 0 and step < spec.steps:
                save_checkpoint(self.run_dir, stage, step, model, optimizer, scheduler, self.fingerprint)
            if self.stop_after is not None and self.steps_this_run >= self.stop_after and step < spec.steps:
                save_checkpoint(self.run_dir, stage, step, model, optimizer, scheduler, self.fingerprint)
                bar.close()
                return False
        bar.close()
        self.log(stage=stage, step=step, student_ppl=self.heldout_ppl(self._eval_model()), end_of_stage=True)
        return True

    def _eval_model(self):
        return self.student

    def _lora_model(self):
        """The student with stage 2's LoRA adapters, made once (stage 1 makes it when it trains them)."""
        if self.peft_model is None:
            self.peft_model = with_lora(self.student, self.recipe)
        return self.peft_model

    def stage1(self, resume_from) -> bool:
        spec = self.recipe.stage1
        paths = converted_paths(self.student)
        if spec.lora:
            self._lora_model()
        names = set(new_parameter_names(self.student))  # after wrapping: a targeted gate's weight is renamed
        groups = {"gates": [], "lora": []}
        for n, p in self.student.named_parameters():
            is_lora = spec.lora and "lora_" in n
            p.requires_grad_(n in names or is_lora)
            if p.requires_grad:
                groups["lora" if is_lora else "gates"].append(p)
        param_groups = [{"params": groups["gates"], "lr": spec.lr}]
        if groups["lora"]:
            param_groups.append({"params": groups["lora"], "lr": spec.lora_lr})
        optimizer = torch.optim.AdamW(param_groups, weight_decay=spec.weight_decay)
        scheduler = _schedule(optimizer, spec.warmup_steps, spec.steps)
        teacher_modules = [self.teacher.get_submodule(p) for p in paths]
        student_modules = [self.student.get_submodule(p) for p in paths]

        def loss_fn(batch):
            with _recording(teacher_modules) as records, torch.no_grad(), self.autocast():
                self.teacher(input_ids=batch[:, :-1], use_cache=False)
            losses = []
            with self.autocast():
                for module, (args, kwargs, out) in zip(student_modules, records):
                    kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "cache")}
                    pred = module(*args, **kwargs)
                    pred = pred[0] if isinstance(pred, tuple) else pred
                    losses.append(relative_mse(pred, out))
            loss = torch.stack(losses).mean()
            return loss, {"loss": loss.detach()}

        done = self._stage_loop("stage1", spec, self.student, optimizer, scheduler, loss_fn, resume_from)
        if done:
            from safetensors.torch import save_file

            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            tmp = self.run_dir / "checkpoints" / "stage1-final.safetensors.tmp"
            save_file(trainable_state(self.student), str(tmp))
            os.replace(tmp, self.run_dir / "checkpoints" / "stage1-final.safetensors")
        return done

    def stage2(self, resume_from) -> bool:
        spec = self.recipe.stage2
        self._lora_model()
        # after wrapping: a targeted gate's weight is renamed (base_layer), its adapters train with the LoRA group
        gate_names = {n for n in new_parameter_names(self.student) if "lora_" not in n}
        gates = []
        for n, p in self.student.named_parameters():
            p.requires_grad_(n in gate_names or "lora_" in n)
            if n in gate_names:
                gates.append(p)
        lora_params = [p for n, p in self.peft_model.named_parameters() if p.requires_grad and "lora_" in n]
        optimizer = torch.optim.AdamW([{"params": lora_params, "lr": spec.lr},
                                       {"params": gates, "lr": spec.gate_lr}], weight_decay=spec.weight_decay)
        scheduler = _schedule(optimizer, spec.warmup_steps, spec.steps)

        def loss_fn(batch):
            inputs, labels = batch[:, :-1], batch[:, 1:]
            with torch.no_grad(), self.autocast():
                teacher_logits = self.teacher(input_ids=inputs, use_cache=False).logits
            with self.autocast():
                student_logits = self.peft_model(input_ids=inputs, use_cache=False).logits
            loss, kl, ce = kd_loss(student_logits, teacher_logits, labels, spec.kl_weight, spec.ce_weight, spec.temperature)
            return loss, {"loss": loss.detach(), "kl": kl, "ce": ce}

        self._eval_model = lambda: self.peft_model  # noqa: E731
        return self._stage_loop("stage2", spec, self.peft_model, optimizer, scheduler, loss_fn, resume_from)

    def finish(self) -> dict:
        from safetensors.torch import save_file

        r = self.recipe
        rows = [json.loads(x) for x in self.metrics_path.read_text().splitlines()]
        ppl = {row["stage"]: row["student_ppl"] for row in rows if row.get("end_of_stage")}
        setup = next(row for row in rows if row["stage"] == "setup")
        summary = {
            "teacher_ppl": self.teacher_ppl,
            "ppl_ratio_before": setup["student_ppl"] / self.teacher_ppl,
            "ppl_ratio_stage1": ppl.get("stage1", float("nan")) / self.teacher_ppl,
            "ppl_ratio_stage2": ppl.get("stage2", float("nan")) / self.teacher_ppl,
            "tokens_per_s": {s: _median([row["tokens_per_s"] for row in rows if row.get("stage") == s and "tokens_per_s" in row])
                             for s in STAGES},
            "train_tokens": {s: getattr(r, s).steps * getattr(r, s).batch_size * getattr(r, s).grad_accum * r.data.seq_len
                             for s in STAGES},
            "expects": r.expects,
            "wall_seconds": _stage_spans(rows),
        }
        summary["expectations"] = check_expectations(r.expects, summary, rows)
        if r.eval.passkey:
            from ..eval import passkey_accuracy

            # under the training precision: in fp32 the student would compile a second set of kernels
            self.peft_model.eval()
            with self.autocast():
                summary["passkey"] = {
                    name: [passkey_accuracy(m, self.tokenizer, n, n_prompts=r.eval.passkey_n, progress=False)
                           for n in r.eval.passkey]
                    for name, m in (("teacher", self.teacher), ("student", self.peft_model))
                }

        def write(tmp: Path):
            save_file(trainable_state(self.peft_model), str(tmp / "trainable.safetensors"))
            (tmp / "recipe.yaml").write_text(recipe_yaml(r))
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))

        _atomic_dir(self.run_dir / "final", write)
        self.log(stage="final", step=0, **{k: v for k, v in summary.items() if isinstance(v, float)})
        try:
            from .plot import plot_run

            plot_run(self.metrics_path, self.run_dir / "losses.png")
        except ImportError:
            pass
        return summary


# --------------------------------------------------------------------------------------- helpers

@contextmanager
def _recording(modules):
    """Record (args, kwargs, first output) of each module's forward, in module order."""
    records = [None] * len(modules)
    handles = []
    for i, module in enumerate(modules):
        def hook(mod, args, kwargs, output, i=i):
            out = output[0] if isinstance(output, tuple) else output
            records[i] = (args, kwargs, out.detach())
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def _schedule(optimizer, warmup: int, total: int):
    def factor(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _stage_spans(rows) -> dict:
    """Seconds from the setup row (model loaded, data tokenised, first evaluation) to the end of each stage,
    and each stage from the end of the one before, its evaluations included. A resumed run's spans include
    the time it stood stopped."""
    ends = {"setup": rows[0]["time"]}
    for row in rows:
        ends[row["stage"]] = max(ends.get(row["stage"], row["time"]), row["time"])
    spans, previous = {}, ends["setup"]
    for stage in STAGES:
        if stage in ends:
            spans[stage] = round(ends[stage] - previous, 1)
            previous = ends[stage]
    spans["to_end_of_training"] = round(previous - ends["setup"], 1)
    return spans


def check_expectations(expects: dict, summary: dict, rows) -> dict:
    """What the run reached against each of the recipe's ``expects`` that can be checked from the run alone:
    ``{name: {"expected", "reached", "met"}}``; the others (``minutes_on_h100``, ``baseline_for``) as
    ``"not checked"``. A miss is reported, not raised: the run and its artifact stand."""
    out = {}
    for name, expected in expects.items():
        if name == "heldout_ppl_ratio" and isinstance(expected, (int, float)) and not isinstance(expected, bool):
            reached = summary["ppl_ratio_stage2"]  # NaN when stage 2 did not run: then not met
            out[name] = {"expected": f"<= {expected}", "reached": round(reached, 4), "met": bool(reached <= expected)}
        elif name in ("stage1_loss_drops", "stage2_loss_drops") and isinstance(expected, bool):
            stage_losses = [row["loss"] for row in rows if row.get("stage") == name[:6] and "loss" in row]
            if len(stage_losses) < 2:
                out[name] = "not checked (fewer than two logged losses)"
                continue
            reached = stage_losses[-1] < stage_losses[0]
            out[name] = {"expected": expected, "reached": reached, "met": reached == expected}
        else:
            out[name] = "not checked"
    return out


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def recipe_fingerprint(recipe: Recipe) -> str:
    """What a resume must share with the run it continues: model, conversion, data, stages, seed.

    Not the conversion's training-only fields (config.TRAINING_ONLY: recompute_states): they change memory and
    speed, not the model, so a run may resume with another choice (e.g. on a smaller GPU; its losses may then
    differ from the uninterrupted run's in rounding), and runs from before those fields existed still match. Nor
    the LoRA targets' MLA names where they are the default's (runs from before they joined it still match).
    """
    import hashlib

    from ..config import TRAINING_ONLY

    d = asdict(recipe)
    keep = {k: d[k] for k in ("model", "conversion", "data", "stage1", "stage2", "seed", "precision")}
    lora = keep["stage2"]["lora"]
    if lora["targets"] == list(DEFAULT_LORA_TARGETS):  # hashed as the default before MLA's names joined it (no model
        lora["targets"] = [t for t in lora["targets"] if t not in MLA_LORA_TARGETS]  # then had them): runs resume
    keep["conversion"] = {k: v for k, v in keep["conversion"].items() if k not in TRAINING_ONLY}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
