"""The per-worker training loop run by Ray Train's TorchTrainer, with DeepSpeed ZeRO applied here.

Each worker: build the plain torch model (workers.training.model), wrap it with
deepspeed.initialize, resume from the newest complete checkpoint under checkpoint.uri (if any,
written by this or another number of workers: workers.training.rescale), then loop over
micro-batches of its data share; every `log_every` optimizer steps rank 0 reports loss, tokens/s
and MFU; every `eval_every` steps all ranks evaluate; every `every_steps` steps all ranks
checkpoint. At the end rank 0 writes the canonical model folder to output.uri. The data is one
global sample order dealt by micro-batch (workers.training.data): a checkpoint records the global
samples trained on, and a resume on any number of workers starts at the next one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import deepspeed
import ray
import ray.train
import structlog
import torch
import torch.distributed as dist

from cluster import logs, storage
from llm_core.device import pick_device, training_precision
from llm_core.tokenizer import load_hf_tokenizer
from workers.model_resolver import resolve_model
from workers.training import checkpoint as ckpt
from workers.training import rescale
from workers.training.config import TrainingConfig, TrainingTask
from workers.training.data import eval_batches, train_batches
from workers.training.sample_index import SampleIndex
from workers.training.encode import Encoder
from workers.training.deepspeed import deepspeed_config
from workers.training.eval import evaluate, forward_loss, to_device
from workers.training.metrics import mfu, model_flops_per_token, peak_flops
from workers.training.model import build_model, causal_lm_of, count_params, export_model
from workers.training.optim import build_optimizer, build_scheduler


def _tokenizer_dir(config: dict, rank: int) -> Path:
    """A local folder with the tokenizer: a model ref resolved on this node, or a stored folder."""
    source = config["tokenizer"]
    if source["kind"] == "ref":
        return resolve_model(source["value"])
    local = Path(tempfile.mkdtemp(prefix=f"llmbatch-tok-r{rank}-"))
    return ckpt.download_folder(source["value"], local)


class _Progress:
    """Rank 0 pushes events to the runner's ProgressSink; other ranks stay silent."""

    def __init__(self, sink, rank: int):
        self.sink, self.rank = sink, rank

    def __call__(self, **event) -> None:
        if self.sink is not None and self.rank == 0:
            self.sink.push.remote(event)

    def cancel_requested(self) -> bool:
        """Rank 0 asks the runner; the answer reaches every rank through the next all-reduce."""
        return self.rank == 0 and self.sink is not None and bool(ray.get(self.sink.cancelled.remote()))


def train_loop(config: dict) -> None:
    """`config`: Ray Train's train_loop_config, built by the runner (jobs.run.training): `training`
    (the TrainingConfig of a validated manifest), job_id, manifest_hash, tokenizer, labels,
    total_steps, sink, s3_settings (the driver's cluster.storage.S3Settings), sample_index (the
    driver's workers.training.sample_index, as a dict), fingerprint (what is trained, for meta)."""
    logs.ensure_configured()
    storage.use_s3_settings(config.get("s3_settings"))  # the driver's, before anything reads storage
    storage.use_scope(config.get("scope"))  # the job's: data, checkpoints and export checked at open
    cfg: TrainingConfig = config["training"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    os.environ.setdefault("LOCAL_RANK", str(ctx.get_local_rank()))
    log = structlog.get_logger().bind(job_id=config["job_id"], rank=rank, world=world)
    progress = _Progress(config.get("sink"), rank)
    device = pick_device()
    train_precision = training_precision(device, cfg.deepspeed.precision)
    precision = train_precision.deepspeed  # DeepSpeed's: fp32 under CPU bf16 autocast
    total_steps, labels = config["total_steps"], config.get("labels")
    tr, ck = cfg.training, cfg.checkpoint

    tok_dir = _tokenizer_dir(config, rank)
    tokenizer = load_hf_tokenizer(tok_dir)
    model_dir = resolve_model(cfg.model.uri) if cfg.task == TrainingTask.FINETUNE else None
    module = build_model(cfg, tokenizer, model_dir, labels, seed=tr.seed)
    optimizer = build_optimizer(module, cfg.optimizer, cfg.deepspeed.offload_optimizer != "none")
    scheduler = build_scheduler(optimizer, total_steps, cfg.optimizer)
    resume_from = ckpt.latest_complete(ck.uri)
    meta = ckpt.read_meta(ck.uri, resume_from) if resume_from is not None else None
    written_by = meta["world_size"] if meta else world
    # Another worker count than the checkpoint's: DeepSpeed must be told at initialize.
    universal = rescale.needs_universal(cfg.deepspeed.zero_stage, written_by, world)
    ds_config = deepspeed_config(cfg.deepspeed, tr, precision)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler,
        config=rescale.universal_config(ds_config) if universal else ds_config,
    )
    n_params, _ = count_params(module)
    lm_cfg = causal_lm_of(module).config
    flops_tok = model_flops_per_token(module, lm_cfg, cfg.data.seq_len)
    peak = peak_flops(device)
    log.info("train.start", params=n_params, precision=train_precision.name, zero_stage=cfg.deepspeed.zero_stage,
             total_steps=total_steps, device=device)

    step = start = consumed = 0  # start: the global sample this run begins at; consumed: micro-batches taken here
    if resume_from is not None:
        ckpt.load(engine, ck.uri, resume_from, rank, universal=universal)
        step = resume_from
        start = rescale.resume_sample(meta, tr.micro_batch, tr.grad_accum)
        log.info("train.resumed", from_step=step, checkpoint=storage.join(ck.uri, ckpt.tag(step)),
                 from_world=written_by, to_world=world, from_sample=start)
        progress(event="resumed", step=step, from_world=written_by, to_world=world)

    encoder = Encoder(cfg, tokenizer, labels)
    evals = eval_batches(cfg, encoder, rank, world) if step < total_steps else []
    # The driver's index (one counting pass for the job); without it each rank builds its own.
    index = SampleIndex.from_dict(config["sample_index"]) if config.get("sample_index") else None

    def trained() -> int:  # global samples trained on: every rank took `consumed` micro-batches
        return start + consumed * tr.micro_batch * world

    batches = train_batches(cfg, encoder, rank, world, start=start, index=index)
    # loss sum, micro-batches, tokens, cancel flag: one all-reduce per log step carries them all
    window = torch.zeros(4, dtype=torch.float64, device=engine.device)
    t_window, last_eval, last_saved = time.perf_counter(), {}, resume_from
    engine.train()
    while step < total_steps:
        batch = to_device(next(batches), engine.device)
        consumed += 1
        loss, _ = forward_loss(engine, batch, cfg.objective, train_precision.autocast)
        # Asked before step(): step() advances the micro-step count the answer is computed from,
        # so asked after it, it names the next micro-batch (with grad_accum > 1 a step would be
        # counted, checkpointed and ended one micro-batch before the optimizer takes it).
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(loss)
        engine.step()
        # Accumulated on the device: no host sync per micro-batch (it would stall a GPU pipeline).
        window[0] += loss.detach().double()
        window[1] += 1
        window[2] += batch["attention_mask"].sum()
        if not boundary:
            continue
        step += 1
        if step % tr.log_every == 0 or step == total_steps:
            window[3] = float(progress.cancel_requested())
            dist.all_reduce(window)
            cancelled = bool(window[3] > 0)
            elapsed = time.perf_counter() - t_window
            tps = float(window[2]) / max(elapsed, 1e-9)
            row = {"event": "step", "step": step, "total_steps": total_steps,
                   "loss": float(window[0] / window[1]) if window[1] else None,
                   "lr": scheduler.get_last_lr()[0], "tokens_per_s": tps,
                   "mfu": mfu(tps, flops_tok, world, peak)}
            if rank == 0:
                log.info("train.step", **{k: v for k, v in row.items() if k != "event"})
            progress(**row)
            window.zero_()
            t_window = time.perf_counter()
            if cancelled and step < total_steps:  # keep the work done: a rerun resumes here
                ckpt.save(engine, ck.uri, step, _meta(config, step, total_steps, trained()), rank, ck.keep, log)
                log.info("train.cancelled", step=step)
                progress(event="cancelled", step=step)
                return
        if tr.eval_every and step % tr.eval_every == 0 and step < total_steps:
            last_eval = evaluate(engine, evals, cfg.objective, labels, tokenizer.pad_token_id,
                                 train_precision.autocast)
            if last_eval and rank == 0:
                log.info("train.eval", step=step, **last_eval)
            if last_eval:
                progress(event="eval", step=step, **last_eval)
        if step % ck.every_steps == 0 and step < total_steps:
            ckpt.save(engine, ck.uri, step, _meta(config, step, total_steps, trained()), rank, ck.keep, log)
            last_saved = step
        _maybe_crash(config, step, rank, world, resume_from, log)

    if last_saved != step:  # the end state too, so a rerun after a failed export skips training
        ckpt.save(engine, ck.uri, step, _meta(config, step, total_steps, trained()), rank, ck.keep, log)
    last_eval = evaluate(engine, evals, cfg.objective, labels, tokenizer.pad_token_id,
                         train_precision.autocast) or last_eval
    if last_eval:
        progress(event="eval", step=step, **last_eval)
        if rank == 0:
            log.info("train.eval", step=step, **last_eval)
    _export(engine, module, tok_dir, labels, cfg, rank, log, config.get("base_identity"))
    if config["tokenizer"]["kind"] == "uri":  # our download, not a shared model cache folder
        shutil.rmtree(tok_dir, ignore_errors=True)
    progress(event="done", step=step, final_eval=last_eval, params=n_params, resumed_from=resume_from)


def _meta(config: dict, step: int, total_steps: int, samples: int) -> dict:
    """`samples`: the global samples trained on so far (all ranks, all runs): where a resume on any
    world size starts. `fingerprint`: what is trained; the driver refuses to resume another."""
    return {"step": step, "total_steps": total_steps, "world_size": dist.get_world_size(), "samples": samples,
            "fingerprint": config.get("fingerprint"), "manifest_hash": config["manifest_hash"],
            "job_id": config["job_id"], "time": time.time()}


def _maybe_crash(config: dict, step: int, rank: int, world: int, resume_from, log) -> None:
    """Test hook (chaos tests only): the last rank dies hard once, on the first attempt."""
    at = config.get("crash_at_step")
    if at is not None and step == at and rank == world - 1 and resume_from is None:
        log.warning("train.crash_for_test", step=step)
        os._exit(1)


def _export(engine, module, tok_dir: Path, labels, cfg: TrainingConfig, rank: int, log,
            base_identity: dict | None = None) -> None:
    """Gather the full weights (ZeRO-3 shards them) and write the model folder from rank 0."""
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if rank == 0 else None
    if rank == 0:
        local = Path(tempfile.mkdtemp(prefix="llmbatch-export-"))
        try:
            export_model(state, module, tok_dir, labels, local, cfg.data.seq_len, adapter=cfg.adapter,
                         base_ref=cfg.model.uri, base_identity=base_identity)
            ckpt.upload_folder(local, cfg.output_uri)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        log.info("train.exported", uri=cfg.output_uri)
    dist.barrier()
