"""The networks at the paper's input size (2 × 64 × 128 × 192): training and inference cost.

For AID-Net (the ``full`` preset's, calcium head, and the ``paper`` preset's, stage head),
ResNet-101 and DenseNet-121 (MONAI), each in a fresh spawned process (so peak memory is that
model's alone), on this machine's CPU threads:

- one training step for one pair: forward and backward of both scans and the Adam step (for the
  Siamese AID-Net, the pair through the shared encoder with its preset's pair loss,
  the negative-evidence penalty included where the head has a calcium map, on a CAC-negative
  pair so that the penalty is computed; for the single-scan baselines, the two scans as a batch
  of two with cross-entropy);
- inference of one scan (evaluation mode, no gradients);
- the peak resident memory of the process while doing both (VmHWM, Linux);
- AID-Net's training step and inference once more in bfloat16 autocast (``cpu_amp``,
  ``aidnet evaluate --bf16``), as ratios to its float32 figures;
- every child keeps freed memory as the ``aidnet`` command does (``aidnet.allocator``), and
  AID-Net runs once more in both precisions with glibc's malloc as it comes: the ratios are
  what that saves.

Medians over ``repeats`` runs after three warm-up runs; ratios against ResNet-101 measured the
same way, and AID-Net's training step once more without the negative-evidence penalty (its cost
as a ratio). ``bench_models_gpu``: training pairs per second on a CUDA device, fp32 and bf16.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from pathlib import Path

from benchmarks.preprocess import _status_mib

PAPER_SIZE = (64, 128, 192)
# "aidnet": the `full` preset's AID-Net (calcium head); "aidnet-stage": the `paper` preset's
MODELS = ("aidnet", "aidnet-stage", "resnet101", "densenet121")


def _step_functions(
    name: str, device: str = "cpu", amp: bool = False, pairs: int = 1, penalty: bool = True
):
    import torch

    from aidnet.config import load_config
    from aidnet.losses import PairLoss, penalty_maps
    from aidnet.models import build_model

    torch.manual_seed(0)
    model_name, _, head = name.partition("-")
    preset = load_config("paper" if head == "stage" else "full")
    model = build_model(
        model_name,
        num_classes=3,
        features=preset.features,
        dropout=preset.dropout,
        head=preset.head,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scan = torch.rand(pairs, 2, *PAPER_SIZE, device=device)
    rescan = torch.rand(pairs, 2, *PAPER_SIZE, device=device)
    # class 0: the negative-evidence penalty acts on CAC-negative scans only, so this is the
    # training step at its dearest (for the cross-entropy the class makes no difference)
    labels = torch.zeros((pairs,), dtype=torch.long, device=device)
    pair_loss = PairLoss(preset.lambda_, preset.margin, negative=preset.negative_evidence)
    dtype = torch.bfloat16 if amp else None

    def train_pair() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=amp):
            if model.siamese:
                o1, o2 = model(scan, rescan)
                maps = penalty_maps(model, o1, o2) if penalty else (None, None)
                loss, _ = pair_loss(o1.logits.float(), o2.logits.float(), labels, labels, *maps)
            else:
                out = model.forward_single(torch.cat([scan, rescan]))
                loss = torch.nn.functional.cross_entropy(out.logits.float(), labels.repeat(2))
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def infer_scan() -> None:
        model.eval()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=amp):
            model.forward_single(scan[:1])
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return train_pair, infer_scan, sum(p.numel() for p in model.parameters())


def _median_runs(fn, repeats: int, warmup: int = 3) -> dict:
    # warm-up: with freed memory kept (aidnet.allocator) the heap settles over the first steps
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"median": statistics.median(runs), "runs": runs}


def _child(
    name: str, repeats: int, queue, penalty: bool = True, amp: bool = False, keep: bool = True
) -> None:
    import torch

    from aidnet.allocator import keep_freed_memory

    # as the `aidnet` command does at start; keep=False: glibc's malloc as it comes
    result: dict = {"kept_freed_memory": keep_freed_memory() if keep else False}

    train_pair, infer_scan, parameters = _step_functions(name, amp=amp, penalty=penalty)
    Path("/proc/self/clear_refs").write_text("5")  # peak := now (model and inputs built)
    before = _status_mib("VmRSS")
    result |= {
        "parameters": parameters,
        "threads": torch.get_num_threads(),
        "train_pair_s": _median_runs(train_pair, repeats),
        "infer_scan_s": _median_runs(infer_scan, repeats),
    }
    peak = _status_mib("VmHWM")
    result["peak_rss_mib"] = peak
    result["peak_increment_mib"] = peak - before
    queue.put(result)


def _in_child(
    name: str, repeats: int, penalty: bool = True, amp: bool = False, keep: bool = True
) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(name, repeats, queue, penalty, amp, keep))
    child.start()
    result = queue.get(timeout=3600)
    child.join()
    return result


def bench_models_gpu(repeats: int) -> dict:
    """Training pairs per second on the first CUDA device, fp32 and bf16 autocast, for one pair
    per step (the paper's batch 2 is two pairs) and for 8 pairs per step (throughput)."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    repeats = max(repeats, 5)
    torch.backends.cudnn.benchmark = True
    out: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name in MODELS:
        out[name] = {}
        for pairs in (1, 8):
            for amp in (False, True):
                torch.cuda.reset_peak_memory_stats()
                train_pair, _, _ = _step_functions(name, "cuda", amp=amp, pairs=pairs)
                timing = _median_runs(train_pair, repeats)
                out[name][f"{'bf16' if amp else 'fp32'}_{pairs}_pairs"] = {
                    **timing,
                    "pairs_per_s": pairs / timing["median"],
                    "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
                }
                del train_pair
                torch.cuda.empty_cache()
    return out


def bench_models(repeats: int) -> dict:
    from aidnet.config import load_config
    from aidnet.training.precision import cpu_has_native_bf16

    full = load_config("full")
    repeats = max(repeats, 5)
    results = {name: _in_child(name, repeats) for name in MODELS}
    # the same AID-Net step without the negative-evidence penalty: what the penalty costs
    without = _in_child("aidnet", repeats, penalty=False)
    # and in bfloat16 autocast (`cpu_amp`, `evaluate --bf16`): native where the CPU has it
    bf16 = _in_child("aidnet", repeats, amp=True)
    # and with glibc's malloc as it comes (each large buffer page-faulted anew every step)
    system = _in_child("aidnet", repeats, keep=False)
    system_bf16 = _in_child("aidnet", repeats, amp=True, keep=False)
    reference = results["resnet101"]
    for result in results.values():
        result["train_ratio_to_resnet101"] = (
            result["train_pair_s"]["median"] / reference["train_pair_s"]["median"]
        )
        result["infer_ratio_to_resnet101"] = (
            result["infer_scan_s"]["median"] / reference["infer_scan_s"]["median"]
        )
    return {
        "input_size": list(PAPER_SIZE),
        "aidnet_features": list(full.features),
        "models": results,
        "aidnet_head": full.head,
        "aidnet_train_ratio_to_stage_head": results["aidnet"]["train_pair_s"]["median"]
        / results["aidnet-stage"]["train_pair_s"]["median"],
        "aidnet_infer_ratio_to_stage_head": results["aidnet"]["infer_scan_s"]["median"]
        / results["aidnet-stage"]["infer_scan_s"]["median"],
        "aidnet_train_pair_s_without_penalty": without["train_pair_s"],
        "aidnet_train_ratio_penalty_to_none": results["aidnet"]["train_pair_s"]["median"]
        / without["train_pair_s"]["median"],
        "aidnet_cpu_bf16": {**bf16, "cpu_has_native_bf16": cpu_has_native_bf16()},
        "aidnet_bf16_train_ratio_to_fp32": bf16["train_pair_s"]["median"]
        / results["aidnet"]["train_pair_s"]["median"],
        "aidnet_bf16_infer_ratio_to_fp32": bf16["infer_scan_s"]["median"]
        / results["aidnet"]["infer_scan_s"]["median"],
        "aidnet_system_malloc": system,
        "aidnet_system_malloc_bf16": system_bf16,
        "aidnet_train_ratio_kept_to_system_malloc": results["aidnet"]["train_pair_s"]["median"]
        / system["train_pair_s"]["median"],
        "aidnet_bf16_train_ratio_kept_to_system_malloc": bf16["train_pair_s"]["median"]
        / system_bf16["train_pair_s"]["median"],
        "aidnet_infer_ratio_kept_to_system_malloc": results["aidnet"]["infer_scan_s"]["median"]
        / system["infer_scan_s"]["median"],
        "targets": {"aidnet_infer_scan_s": 1.0, "aidnet_train_pair_s": 4.0},
    }
