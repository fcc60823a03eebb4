"""Train a DDPM with Accelerate: the loop, from set-up to the saved pipeline, and the previews and saves it makes.

`train()` reads from top to bottom: the Accelerator, the run's folder, the state (data, model, EMA, optimiser, LR
schedule, clock: state.py), resume (checkpoint.py), then one optimiser step per turn of the loop (step.py), with
logging (run_log.py), checkpoints and previews, then the final save. The settings are in config.py.

It accepts every flag of diffusers' `train_unconditional.py` with the same name and meaning, and differs where that
script goes wrong: the forward process runs in float32 (only the UNet is autocast); the LR schedule counts optimiser
steps whatever the accumulation and process count; every process writes its part of a checkpoint (DeepSpeed and
FSDP need it), and checkpoints are atomic, verified and never another run's; streams need no length; `--seed`
makes runs reproducible; `--hub_private_repo` is honoured and checkpoints are never uploaded.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, broadcast_object_list, set_seed
from diffusers import SchedulerMixin, UNet2DModel
from diffusers.training_utils import EMAModel

from . import checkpoint, ema_snapshots, hub, losses, network, rundir, sampling
from .checkpoint import Checkpointer
from .config import TrainingConfig, parse_args
from .data import DataError
from .errors import TrainingError
from .pipeline import AnimeDDPMPipeline
from .run_log import RunLog, log_grid, precision_name
from .state import DataOutage, TrainingState, choose_cpu_threads, resolve_mixed_precision
from .step import TrainStep


logger = get_logger(__name__)

QUIET_LIBRARIES = ("datasets", "diffusers", "transformers", "huggingface_hub", "accelerate", "httpx", "httpx2")


class Callbacks:
    """Hooks for tests and tools. These do nothing, so a normal run does no work for them."""

    def on_micro_batch(self, index: int, x0: torch.Tensor) -> torch.Tensor:
        """Each micro-batch before the step sees it (index counts from 0 in this process); returns the batch."""
        return x0

    def on_step_end(self, state: TrainingState, lr: float, elapsed: float) -> None:
        """After optimiser step `state.step`, taken with learning rate `lr`; `elapsed` decides whether to stop."""

    def on_checkpoint_written(self, folder: str, step: int) -> None:
        """Main process: a checkpoint's files are complete in `folder`, not yet verified and published."""

    def on_train_end(self, state: TrainingState, final_unet: UNet2DModel) -> None:
        """Every process, after the loop: the trained state and the weights about to be saved."""


# ============================================================================================= the loop
def train(config: TrainingConfig, callbacks: Callbacks | None = None) -> int:
    """Train, save the pipeline and samples, optionally push. Returns the process exit code (0: success)."""
    callbacks = callbacks or Callbacks()
    config.validate()
    check_push_possible(config)
    output_dir = config.resolved_output_dir()
    rundir.check_writable(output_dir)
    accelerator = make_accelerator(config, output_dir)
    identity = config.run_identity(accelerator.num_processes)
    with rundir.RunDirectory(output_dir, config.overwrite_output_dir, accelerator.is_main_process) as folder:
        resume = find_resume(config, accelerator, output_dir, identity, folder)
        set_seed(config.seed)  # the same initial weights on every process
        state = TrainingState.build(config, accelerator)
        checkpoints = Checkpointer(accelerator, output_dir, identity, config.checkpoints_total_limit,
                                   before_publish=callbacks.on_checkpoint_written)  # fmt: skip
        checkpoints.register(checkpoint_emas(state), state.unet.config)
        if resume is not None:
            accelerator.print(f"Resuming from {resume[0]}")
            state.load_checkpoint_state(*checkpoints.load(*resume))
        if accelerator.is_main_process:  # this run's snapshots from after the checkpoint: about to be written again
            ema_snapshots.drop_after(output_dir, state.step, checkpoints.run_id)
        preview_unet = None  # the copy previews load the EMA (or current) weights into: main process only
        if accelerator.is_main_process:
            preview_unet = UNet2DModel.from_config(state.unet.config).to(accelerator.device).eval()
        run_log = RunLog(config, state, output_dir)
        run_log.start(threads=choose_cpu_threads(accelerator))

        step = TrainStep(accelerator, state.model, state.optimizer, state.loss_fn, state.generator,
                         config.max_grad_norm, check_finite=bool(config.max_nonfinite_steps))  # fmt: skip
        nonfinite_limit = config.max_nonfinite_steps + (16 if step.scaler_in_use else 0)  # fp16: the scaler's own
        micro_batches, nonfinite_in_a_row, last_checkpoint, epoch_seen = 0, 0, None, state.batches.epoch
        state.model.train()
        state.clock.restart()  # set-up and resume are not training time
        done = state.done(state.clock.elapsed())
        while not done:
            # -- one micro-batch: forward and backward; the optimiser acts on the last one of each window
            try:
                batch = next(state.batches)
            except DataOutage as outage:  # waited for the data as long as allowed: keep the work, say how to go on
                raise stop_for_outage(outage, state, checkpoints, last_checkpoint) from None
            x0 = callbacks.on_micro_batch(micro_batches, batch["pixel_values"].to(accelerator.device, non_blocking=True))  # fmt: skip
            micro_batches += 1
            class_labels = None
            if state.conditioning is not None:  # the source index, dropped to the null class at random
                class_labels = state.conditioning.labels(batch["source"], state.generator, device=accelerator.device)
            stepped = step(x0, class_labels)
            if stepped is None:  # inside an accumulation window
                continue

            # -- a skipped step (non-finite loss or gradients): no update, no LR or EMA step; the step is retried
            if not stepped:
                nonfinite_in_a_row += 1
                step.discard()
                logger.warning(f"Non-finite loss or gradients at step {state.step + 1}: skipped ({nonfinite_in_a_row} in a row).")  # fmt: skip
                if nonfinite_in_a_row >= nonfinite_limit:
                    raise nonfinite_error(nonfinite_in_a_row, state.step + 1, last_checkpoint, resume)
                continue
            nonfinite_in_a_row = 0

            # -- the optimiser stepped: EMA, step count, LR, logging
            lr = state.optimizer.param_groups[0]["lr"]
            elapsed = state.agreed_elapsed()
            state.finish_step(elapsed)
            done = state.done(elapsed)
            callbacks.on_step_end(state, lr, elapsed)
            run_log.step_done(step, done)

            # -- checkpoint, previews, epoch-based saves (diffusers' flags)
            with run_log.paused():
                epoch_done, epoch_seen = state.batches.epoch > epoch_seen, state.batches.epoch
                if state.snapshot_emas and (state.step % config.ema_snapshot_steps == 0 or done):
                    write_snapshots(state, output_dir, checkpoints.run_id)
                if state.step % config.checkpointing_steps == 0:
                    last_checkpoint = checkpoints.save(state.step, *state.checkpoint_state(elapsed))
                    logger.info(f"Saved {last_checkpoint}")
                if previews_due(config, state, epoch_done):
                    grid = preview(preview_unet, state)
                    if accelerator.is_main_process:
                        Path(output_dir, "samples").mkdir(exist_ok=True)
                        grid.save(Path(output_dir, "samples", f"step-{state.step:07d}.png"))
                        log_grid(accelerator, grid, state.step)
                if epoch_done and config.save_model_epochs and state.batches.epoch % config.save_model_epochs == 0:
                    save_pipeline(copy_weights(preview_unet, state), state, output_dir)

        # ---------------------------------------------------------------- final save (the EMA weights when EMA is on)
        accelerator.wait_for_everyone()
        if state.step and not os.path.isdir(os.path.join(output_dir, f"checkpoint-{state.step}")):  # to go on exactly
            checkpoints.save(state.step, *state.checkpoint_state(state.agreed_elapsed()))
        final_unet = copy_weights(UNet2DModel.from_config(state.unet.config), state)
        callbacks.on_train_end(state, final_unet)
        summary = run_log.finish("completed")
        exit_code = 0
        if accelerator.is_main_process:
            info = card_info(config, summary, state.ema)
            exit_code = save_final(config, state, output_dir, final_unet.to(accelerator.device), info)
            accelerator.print(run_log.closing_line(summary))
        accelerator.wait_for_everyone()
        accelerator.end_training()
    return exit_code


# ============================================================================================= set-up and resume
def make_accelerator(config: TrainingConfig, output_dir: str) -> Accelerator:
    # A process waiting out a data outage (--data_retry_minutes) leaves the others waiting in a collective: they
    # must not time out before it does.
    patience = InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=config.data_retry_minutes + 10))
    accelerator = Accelerator(
        kwargs_handlers=[patience],
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(
            project_dir=output_dir, logging_dir=os.path.join(output_dir, config.logging_dir)
        ),  # fmt: skip
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise TrainingError("fp16 mixed precision needs a GPU (on a CPU Accelerate would silently train in fp32): use --mixed_precision bf16 or no.")  # fmt: skip
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for name in QUIET_LIBRARIES:  # httpx logs every Hub request at INFO
        library = logging.getLogger(name)
        library.setLevel(logging.WARNING if accelerator.is_main_process else logging.ERROR)
        library.handlers.clear()  # their own handlers would print each line a second time, unformatted
        library.propagate = True
    network.quiet_retry_warnings()
    return accelerator


def find_resume(config: TrainingConfig, accelerator: Accelerator, output_dir: str, identity: dict[str, Any],
                folder: rundir.RunDirectory) -> tuple[str, dict[str, Any]] | None:  # fmt: skip
    """The checkpoint to resume (path, manifest), decided by the main process and told to every process, or None
    for a new run, which may not start in a folder holding another run's work."""
    decision: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            found = None
            if config.resume_from_checkpoint:
                found = checkpoint.find_resumable(output_dir, config.resume_from_checkpoint)
                if found is None and rundir.previous_run(output_dir):  # a finished run of an older version
                    raise TrainingError(f"{output_dir} holds a trained pipeline but no checkpoint to resume: start over with --overwrite_output_dir, or choose another --output_dir.")  # fmt: skip
                if found is None:
                    logger.info(f"No checkpoint in {output_dir} yet: starting a new training run.")
            if found is not None:
                checkpoint.check_belongs(found[0], found[1], identity)
                others = checkpoint.other_runs_checkpoints(output_dir, found[1]["run_id"])
                if others:
                    names = ", ".join(os.path.basename(path) for path in others)
                    raise TrainingError(f"{output_dir} also holds another run's checkpoints ({names}): move them to another folder, then resume.")  # fmt: skip
            else:
                folder.refuse_if_held()
            decision = [found]
        except TrainingError as error:
            decision = [error]
    broadcast_object_list(decision)
    if isinstance(decision[0], TrainingError):
        raise decision[0]
    return decision[0]


def nonfinite_error(count: int, step: int, last_checkpoint: str | None, resume) -> TrainingError:
    last = last_checkpoint or (resume[0] if resume else None)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    return TrainingError(
        f"The loss was not finite for {count} optimiser steps in a row (at step {step}), so training stopped; "
        f"{where} (try a lower --learning_rate or --mixed_precision no).",
        exit_code=1,
    )


def stop_for_outage(outage: DataOutage, state: TrainingState, checkpoints: Checkpointer,
                    last_checkpoint: str | None) -> TrainingError:  # fmt: skip
    """A checkpoint of the steps done (one process: the others of a multi-process run are blocked elsewhere and
    cannot take part in writing one), and the sentence that says how to resume."""
    if state.accelerator.num_processes == 1 and state.step and not (last_checkpoint or "").endswith(f"-{state.step}"):
        last_checkpoint = checkpoints.save(state.step, *state.checkpoint_state(state.agreed_elapsed()))
    for tracker in state.accelerator.trackers:  # flushed now: the process ends without interpreter shutdown
        tracker.finish()
    kept = f"the work is in {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    return TrainingError(f"{outage}, so training stopped; {kept}: once the data is back, run the same command again with --resume_from_checkpoint latest.", exit_code=1, threads_stuck=True)  # fmt: skip


def check_push_possible(config: TrainingConfig) -> None:
    if config.push_to_hub and not config.hub_token:
        from huggingface_hub import get_token

        if not get_token():
            raise TrainingError("--push_to_hub needs a token: set HF_TOKEN, run `hf auth login` or pass --hub_token.")


# ============================================================================================= previews and saves
def previews_due(config: TrainingConfig, state: TrainingState, epoch_done: bool) -> bool:
    due = bool(config.save_images_steps) and state.step % config.save_images_steps == 0
    return due or (epoch_done and bool(config.save_images_epochs) and state.batches.epoch % config.save_images_epochs == 0)  # fmt: skip


def copy_weights(target: UNet2DModel | None, state: TrainingState) -> UNet2DModel | None:
    """Load the weights to sample or save into `target`: the EMA when on, else the trained model.

    Call on every process (gathering a sharded model is collective); only the main process's `target` is used.
    """
    accelerator = state.accelerator
    state_dict = None if state.ema is not None else accelerator.get_state_dict(state.model)
    if accelerator.is_main_process:
        if state.ema is not None:
            state.ema.copy_to(target.parameters())
        else:
            target.load_state_dict(state_dict)
    return target


def checkpoint_emas(state: TrainingState) -> dict[str, EMAModel]:
    """Every EMA a checkpoint holds, by folder: the EMA of --use_ema and the power-function EMAs of snapshots."""
    emas = {checkpoint.EMA_DIR: state.ema} if state.ema is not None else {}
    emas.update({checkpoint.SNAPSHOT_EMA_DIR.format(sigma_rel=s): ema for s, ema in state.snapshot_emas.items()})
    return emas


def write_snapshots(state: TrainingState, output_dir: str, run_id: str) -> None:
    """Main process: each power-function EMA's weights now, for `anime-ddpm posthoc-ema` (ema_snapshots.py)."""
    if state.accelerator.is_main_process:
        names = [name for name, _ in state.unet.named_parameters()]
        for sigma_rel, ema in state.snapshot_emas.items():
            tensors = dict(zip(names, ema.shadow_params, strict=True))
            ema_snapshots.write(output_dir, state.step, sigma_rel, run_id, tensors)


def sample_grid(unet: UNet2DModel, scheduler: SchedulerMixin, config: TrainingConfig, num_images: int):
    """The run's grid of `num_images` samples with its preview sampler and seed (`sampling.sample_grid`)."""
    pipe = AnimeDDPMPipeline(unet=unet, scheduler=scheduler)
    return sampling.sample_grid(pipe, num_images, seed=config.seed, scheduler=config.sample_scheduler,
                                num_inference_steps=config.preview_steps())  # fmt: skip


def preview(preview_unet: UNet2DModel | None, state: TrainingState):
    """The preview grid of the current weights (main process; None elsewhere). Call on every process."""
    copy_weights(preview_unet, state)
    if state.accelerator.is_main_process:
        return sample_grid(preview_unet, state.noise_scheduler, state.config, state.config.eval_batch_size)
    return None


def save_pipeline(unet: UNet2DModel | None, state: TrainingState, output_dir: str) -> None:
    if state.accelerator.is_main_process:
        scheduler = losses.sampling_scheduler(state.noise_scheduler, unet)
        AnimeDDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(output_dir)


def save_final(config: TrainingConfig, state: TrainingState, output_dir: str, unet: UNet2DModel,
               info: dict[str, Any]) -> int:  # fmt: skip
    """Main process: the pipeline, samples.png and the model card; then the optional push. Returns an exit code.

    Everything is on disk before the push starts, so a failed push loses nothing (exit code 1, the command to retry).
    """
    pipeline = AnimeDDPMPipeline(unet=unet, scheduler=losses.sampling_scheduler(state.noise_scheduler, unet))
    grid = sample_grid(unet, state.noise_scheduler, config, config.num_samples)
    try:
        hub.save_for_hub(pipeline, output_dir, info, sample_grid=grid)  # pipeline + README.md + samples.png
    except Exception as error:  # the card is a nicety: save the pipeline and the grid without it
        logger.warning(f"Could not write the model card: {error}")
        pipeline.save_pretrained(output_dir)
        grid.save(os.path.join(output_dir, "samples.png"))
    log_grid(state.accelerator, grid, state.step, tag="final_samples")
    logger.info(f"Saved the pipeline and samples.png to {output_dir}")
    if not config.push_to_hub:
        return 0
    repo_id = config.hub_model_id or Path(output_dir).resolve().name
    try:
        url = hub.push_to_hub(output_dir, repo_id, token=config.hub_token, private=config.hub_private_repo)
    except Exception as error:
        message = str(error).replace(config.hub_token, "***") if config.hub_token else str(error)
        print(f"train_with_accelerate: the push to {repo_id} failed: {message} The trained pipeline is saved in "
              f"{output_dir}; push it later with `python -c \"from anime_ddpm.hub import push_to_hub; push_to_hub('{output_dir}', '{repo_id}')\"` (it uploads the model, never checkpoints or logs).", file=sys.stderr)  # fmt: skip
        return 1
    logger.info(f"Pushed to {url}")
    return 0


def card_info(config: TrainingConfig, summary: dict[str, Any], ema: EMAModel | None) -> dict[str, Any]:
    """What the model card reports (anime_ddpm.hub.TrainingInfo fields; unknown keys become extra rows), from the
    run's settings, its summary.json and its EMA (None: none, or built after the run), so `posthoc-ema` can write it
    too."""
    if config.variance_type == "learned_range":
        loss = "L_hybrid = L_simple + 0.001 L_vlb (Improved DDPM)"
    else:
        loss = f"L_simple (MSE of the {config.prediction_type} target)"
    if config.snr_gamma:
        loss += f", min-SNR-{config.snr_gamma:g} weighted"
    if config.x0_weight_cap:
        loss += f", weighted by min(SNR + 1, {config.x0_weight_cap:g})"
    if config.weighting_scheme == "logit_normal":
        loss += f", timesteps logit-normal (mean {config.logit_mean:g}, std {config.logit_std:g})"
    if config.input_perturbation:
        loss += f", input perturbation {config.input_perturbation:g} (DDPM-IP)"
    if config.self_condition:
        loss += ", self-conditioned"
    dataset = config.dataset_spec or (config.train_data_dir and f"local folder {config.train_data_dir}") or "emoji"
    world_size = summary["num_processes"]
    info = dict(
        repo_id=config.hub_model_id,
        dataset=dataset,
        resolution=config.resolution,
        unet_preset=None if config.model_config_name_or_path else config.model,
        train_steps=summary["steps"],
        epochs=summary["epochs"],
        num_parameters=summary["num_parameters"],
        num_processes=world_size,
        batch_size=config.train_batch_size * world_size * config.gradient_accumulation_steps,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler=config.lr_scheduler,
        lr_warmup_steps=config.lr_warmup_steps,
        optimizer=f"AdamW (betas {config.adam_beta1}, {config.adam_beta2}, weight decay {config.adam_weight_decay:g})",
        mixed_precision=summary["mixed_precision"],
        num_train_timesteps=config.ddpm_num_steps,
        beta_schedule=config.ddpm_beta_schedule,
        variance_type=config.variance_type,
        prediction_type=config.prediction_type,
        loss=loss,
        snr_gamma=config.snr_gamma,
        use_ema=config.use_ema,
        ema_decay=ema.cur_decay_value if ema is not None and summary["steps"] else None,
        ema_sigma_rel=getattr(ema, "sigma_rel", None),
        final_loss=summary["final_loss"],
        seed=config.seed,
        training_time=f"{summary['seconds'] / 60:.1f} min on {world_size} x {summary['device']} ({precision_name(summary['mixed_precision'])})",
        sample_caption=f"{config.num_samples} samples, {config.sample_scheduler} with {config.preview_steps()} steps, seed {config.seed}",
    )  # fmt: skip
    return {k: v for k, v in info.items() if v is not None}


def main(argv: Sequence[str] | None = None, callbacks: Callbacks | None = None, script: bool = False) -> int:
    """Entry point of train_with_accelerate.py: parse, train, turn known errors into one line and an exit code.

    `script`: this is the whole process, so after an outage (threads stuck in the network) it ends at once with the
    exit code, the outputs flushed and the checkpoint already written, rather than through interpreter shutdown."""
    try:
        return train(parse_args(argv), callbacks)
    except (TrainingError, DataError) as error:
        print(f"train_with_accelerate: error: {error}", file=sys.stderr)
        code = getattr(error, "exit_code", 2)
        if script and getattr(error, "threads_stuck", False):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
