"""The training stages as scripts, for one process or many (``accelerate launch``).

    python -m recipes.train sft --profile tiny
    python -m recipes.train dpo --profile tiny          # after 02 and 03 (DPO trains on stage 03's pairs)
    python -m recipes.train rloo --profile tiny         # after 02 and 03
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m recipes.train sft --profile colab-t4
    accelerate launch --config_file recipes/accelerate/multi_cpu.yaml -m recipes.train sft --profile tiny

The notebooks tell the story; these scripts run the same ``utils`` functions in the same order without
it, so a stage can use every GPU of a machine (DDP, FSDP or DeepSpeed ZeRO, per the accelerate config in
``recipes/accelerate/``). Parameters are the notebook's own defaults, then the profile's stage section,
then ``--set key=value`` overrides, all checked as the runner checks them. Results go where the runner puts
them (``runs/<profile>/<NN_stage>/``), written by the main process into a temporary folder and renamed into
place when the stage finished, with the same ``stage.json`` (fingerprint included) the runner writes: the
runner then knows the stage was redone with these settings and redoes what depends on it. The run folder
is locked while the script works (a runner or a second script on it is refused); ``--force`` deletes the
stage's checkpoints first.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from recipes.run import RUNS_DIR, OneLineParser
from utils.pipeline.notebook_params import ParameterError, effective_parameters
from utils.pipeline.profile import REPO_ROOT, load_profile
from utils.pipeline.run_lock import RunFolderInUse, RunLock
from utils.pipeline.stage_record import (
    StageRecord,
    checkpoint_folder,
    claim_checkpoints,
    publish,
    read_record,
    temporary_dir,
    tidy_checkpoints,
    upstream_on_disk,
)
from utils.pipeline.stages import DPO, PPO, REWARD, RLOO, SFT, checkpoint_dir, notebook_path

STAGES = {"sft": SFT, "reward": REWARD, "ppo": PPO, "dpo": DPO, "rloo": RLOO}  # the script's name for a stage -> the stage


def stage_parameters(stage: str, profile_name: str, overrides: list[str]) -> dict[str, Any]:
    """The notebook's defaults, the profile's values, then ``--set KEY=VALUE`` (a YAML value), all checked."""
    profile = load_profile(profile_name)
    given = profile.overrides(stage)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParameterError(f"--set {item!r}: expected KEY=VALUE")
        try:
            given[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ParameterError(f"--set {item!r}: the value is not YAML ({getattr(e, 'problem', None) or e})") from None
    try:
        return effective_parameters(notebook_path(stage), given, root=REPO_ROOT)
    except ParameterError as e:
        raise ParameterError(f"{profile.path}: stage {stage}{' (with --set)' if overrides else ''}: {e}") from None


def train_sft(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 02 without the narrative: the steps of notebooks/02_sft.ipynb, in its order (plots and replies left out)."""
    from accelerate import PartialState

    from utils.model.modeling import count_parameters, peak_memory_mb
    from utils.sft import stage as sft_stage
    from utils.sft.params import SFTParams
    from utils.sft.training import train_sft as train_adapter

    state, started = PartialState(), time.time()
    params = SFTParams(**p)
    data = sft_stage.load_data(params)
    base = sft_stage.load_base(params, data, state.device, build_first=state.main_process_first)  # one process builds
    train_set, eval_set = sft_stage.encode(params, data, base.tokenizer)
    model = sft_stage.load_model(params, base, state.device)
    parameters = count_parameters(model)
    trainer = sft_stage.make_trainer(params, model, base.tokenizer, train_set, eval_set, out.parent, out)
    stats = train_adapter(trainer)
    peak_mb = peak_memory_mb()
    adapter_dir, merged_dir = out / "adapter", None
    if state.is_main_process:
        adapter_dir, merged_dir = sft_stage.save(params, trainer, base, out)
    return sft_stage.stage_metrics(out, params, data, base, stats, train_set=train_set, eval_set=eval_set, parameters=parameters,
                                   adapter_dir=adapter_dir, merged_dir=merged_dir, peak_memory_mb=peak_mb, device=state.device,
                                   processes=state.num_processes, started=started)


def train_reward(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 03 without the narrative: the steps of notebooks/03_reward.ipynb, in its order (plots left out)."""
    from accelerate import PartialState

    from utils.reward import stage as reward_stage
    from utils.reward.params import RewardParams

    state, started = PartialState(), time.time()
    params = RewardParams(**p)
    data = reward_stage.load_data(params)
    trained = reward_stage.train(params, data, out, checkpoint_dir(out.parent, REWARD), log=print if state.is_main_process else None)
    if not state.is_main_process:  # held-out evaluation is inference: the main process does it alone, and records
        return {}
    evaluation = reward_stage.evaluate(params, data, trained, device=state.device)
    return reward_stage.stage_metrics(out, params, data, trained, evaluation, processes=state.num_processes, started=started)


def train_ppo(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 04 without the narrative: the steps of notebooks/04_ppo.ipynb, in its order (plots and replies left out).

    Each process samples and trains on its share of every batch (utils.ppo averages what must agree).
    """
    import torch
    from accelerate import PartialState

    from utils.model import distributed
    from utils.ppo import stage as ppo_stage
    from utils.ppo.params import PPOParams

    state = PartialState()  # initialises the process group under accelerate launch / torchrun
    params = PPOParams(**p)
    data = ppo_stage.load_data(params)
    models = ppo_stage.load_models(params, out.parent, data, device=state.device)
    trainer = ppo_stage.make_trainer(params, out.parent, data, models, log=print if state.is_main_process else None)
    trainer.train(params.updates)
    # One number per process that moves with every policy weight: equal everywhere iff the processes stayed in sync.
    checksum = torch.stack([q.detach().double().sum() for q in trainer.params]).sum().reshape(1)
    checksums = [float(c) for c in distributed.all_gather(checksum)]
    adapter_dir, snapshots = out / "adapter", {}
    if state.is_main_process:
        adapter_dir, snapshots = ppo_stage.save(trainer, models, out)
    return ppo_stage.stage_metrics(trainer, out, data, models, adapter_dir=adapter_dir, snapshots=snapshots,
                                   processes=state.num_processes, policy_checksums=checksums)


def train_dpo(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 04_dpo without the narrative: the steps of notebooks/04_dpo.ipynb, in its order (plot and replies left out)."""
    from accelerate import PartialState

    from utils.dpo import stage as dpo_stage
    from utils.dpo.params import DPOParams
    from utils.dpo.policy import save_trained_policy
    from utils.model.modeling import count_parameters, peak_memory_mb

    state, started = PartialState(), time.time()
    params = DPOParams(**p)
    data = dpo_stage.load_data(params, out.parent)
    policy = dpo_stage.load_policy_and_pairs(params, out.parent, data, state.device)
    trainer, stats = dpo_stage.train(params, out.parent, policy)
    peak_mb = peak_memory_mb()
    parameters = count_parameters(trainer.model)
    adapter_dir = out / "adapter"
    if state.is_main_process:
        adapter_dir = save_trained_policy(trainer, policy.tokenizer, out)
    return dpo_stage.stage_metrics(out, params, data, policy, stats, adapter_dir=adapter_dir, parameters=parameters,
                                   peak_memory_mb=peak_mb, processes=state.num_processes, started=started)


def train_rloo(p: dict[str, Any], out: Path) -> dict[str, Any]:
    """Stage 04_rloo without the narrative: the steps of notebooks/04_rloo.ipynb, in its order (plots and replies left out).

    Under accelerate launch each process samples its share of every update's prompts (trl gathers the rewards, so
    each prompt's k replies still share one leave-one-out baseline).
    """
    from accelerate import PartialState

    from utils.dpo.policy import save_trained_policy
    from utils.model.modeling import peak_memory_mb
    from utils.rloo import stage as rloo_stage
    from utils.rloo.params import RLOOParams

    state, started = PartialState(), time.time()
    params = RLOOParams(**p)
    data = rloo_stage.load_data(params)
    models = rloo_stage.load_models(params, out.parent, data, state.device)
    trainer, stats, progress = rloo_stage.train(params, out.parent, out, data, models, log=print if state.is_main_process else None)
    peak_mb = peak_memory_mb()
    adapter_dir = out / "adapter"
    if state.is_main_process:
        adapter_dir = save_trained_policy(trainer, models.tokenizer, out)
    return rloo_stage.stage_metrics(out, params, data, models, stats, adapter_dir=adapter_dir, progress=progress,
                                    peak_memory_mb=peak_mb, processes=state.num_processes, started=started)


TRAINERS: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {"sft": train_sft, "reward": train_reward, "ppo": train_ppo,
                                                                         "dpo": train_dpo, "rloo": train_rloo}


def limit_gpu_memory(gib: float, device) -> None:
    """Cap torch's allocator at ``gib`` on ``device``: an out-of-memory error past it, as on a card of that size."""
    import torch

    if device.type != "cuda":
        raise SystemExit("error: --max-gpu-memory-gib needs a CUDA GPU")
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), index)


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m recipes.train", description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=sorted(TRAINERS))
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--run-dir", type=Path, help="default runs/<profile>")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter (YAML value), e.g. --set max_steps=10")
    ap.add_argument("--on-error", choices=["raise", "skip"], help="the stage's on_error (the same as --set on_error=...)")
    ap.add_argument("--force", action="store_true", help="start fresh: delete the stage's checkpoints first")
    ap.add_argument("--max-gpu-memory-gib", type=float, metavar="GIB",
                    help="let torch allocate at most this much GPU memory: emulates a smaller card (15 for a 16 GB T4)")
    args = ap.parse_args(argv)
    stage = STAGES[args.stage]
    if args.on_error:
        args.overrides.append(f"on_error={args.on_error}")
    try:
        params = stage_parameters(stage, args.profile, args.overrides)
        run_dir = Path(args.run_dir or RUNS_DIR / load_profile(args.profile).name)
        if run_dir.exists() and not run_dir.is_dir():
            raise ParameterError(f"--run-dir {run_dir} is a file, not a folder")
    except (ParameterError, ValueError, OSError, KeyError) as e:  # a bad profile, path or --set: one line, no traceback
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 1

    import torch
    from accelerate import PartialState

    from utils.pipeline import machine
    from utils.pipeline.artifacts import write_metrics

    # First, before any library makes its own: accelerate's process state is a singleton, and without a GPU
    # only cpu=True makes it see the launcher's processes (MULTI_CPU over gloo) instead of a single one.
    state = PartialState(cpu=not torch.cuda.is_available())
    if args.max_gpu_memory_gib:
        limit_gpu_memory(args.max_gpu_memory_gib, state.device)
    if state.num_processes == 1:  # several processes share the cores: each keeps what the launcher gave it
        machine.use_available_cores()
    others_running = machine.running_now()
    lock = RunLock(run_dir, command=f"python -m recipes.train {args.stage} --profile {args.profile}")
    tmp, final = temporary_dir(run_dir, stage), run_dir / stage
    record = StageRecord.make(stage, params, notebook_path(stage), upstream_on_disk(run_dir, stage), how="script")
    folder, default_location = checkpoint_folder(run_dir, stage, params, REPO_ROOT)
    if state.is_main_process:  # one process holds the folder; the launcher ends the others if it is refused
        try:
            lock.acquire()
        except RunFolderInUse as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        try:
            claim_checkpoints(folder, record.fingerprint, args.force, default_location)
        except ValueError as e:
            lock.release()
            print(f"error: {e}", file=sys.stderr)
            return 1
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        old = read_record(final)
        print(f"{stage}: {'--force' if args.force else record.differences(old) or 'unchanged, run again'}", flush=True)
    state.wait_for_everyone()
    try:
        started = time.time()
        metrics = TRAINERS[args.stage](params, tmp)
        if torch.cuda.is_available():  # what a card must hold: the allocator's cache too, not only live tensors
            metrics["gpu_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        state.wait_for_everyone()
        if state.is_main_process:
            write_metrics(tmp, {**metrics, "script": f"recipes.train {args.stage}", "parameters": params})
            record.seconds = round(time.time() - started, 1)
            record.machine = machine.describe(others_running=others_running, threads=torch.get_num_threads())
            record.write(tmp)
            publish(tmp, final)  # the same record and the same atomic swap as the runner's
            tidy_checkpoints(folder, default_location)
            print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, default=str))
        state.wait_for_everyone()
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
