"""GPU: synthetic-data training throughput (img/s) and model-FLOPs utilisation, 224 px, bf16, channels_last.

    python benchmarks/gpu.py            # needs a CUDA GPU; about 5 minutes on one H100

efficientnet_b0 (the project's, efficientnet-pytorch) and resnet50 (torchvision), eager and with
torch.compile. Each runs nf_trainer's train step (nf_trainer.trainer.speed with the default trainer
settings: bf16 autocast, channels_last, fused AdamW, cudnn.benchmark) on a batch that already sits on
the GPU: no input pipeline, the model-bound ceiling (timm's benchmark.py method). MFU = img/s x training
FLOPs per image (3 x the forward FLOPs torch.utils.flop_counter counts) / the GPU's dense bf16 peak.
Targets on one H100: efficientnet_b0 >= 3000 img/s, resnet50 MFU >= 15%.
"""
from __future__ import annotations

import sys
import time

from common import ROOT, parser

# dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = [("H200", 989.4e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12),
             ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12), ("L4", 121e12)]
MODELS = {
    "efficientnet_b0": {"_target_": "nf_trainer.model.efficientnet.efficientnet", "name": "efficientnet-b0"},
    "resnet50": {"_target_": "torchvision.models.resnet50"},
}


def peak_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def trainer_config(compile_model: bool):
    """The default `trainer` node of conf/, with compile switched."""
    from hydra import compose, initialize_config_dir

    from nf_trainer.core.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"trainer.compile={compile_model}"])
    return cfg.trainer


def build_model(name: str, image_size: int):
    from nf_trainer import create_instance

    node = dict(MODELS[name], num_classes=1000)
    if name.startswith("efficientnet"):
        node |= {"in_channels": 3, "image_size": image_size}
    return create_instance(node)


def forward_flops(model, image_size: int, device) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, image_size, image_size, device=device))
    model.train()
    return float(counter.get_total_flops())


def measure(name: str, compile_model: bool, args, device) -> dict:
    import torch

    from nf_trainer.trainer import speed

    torch.manual_seed(0)
    model = build_model(name, args.image_size).to(device)
    flops = forward_flops(model, args.image_size, device)
    trainer = trainer_config(compile_model)
    step_settings = speed.build(trainer, model, device)
    optimizer_node = {"_target_": "torch.optim.AdamW"}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **speed.optimizer_kwargs(optimizer_node, device, True))
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    targets = torch.randint(0, 1000, (args.batch_size,))
    images, targets = step_settings.to_device(images, targets, device)

    def step():
        with step_settings.autocast():
            loss = loss_fn(model(images), targets)
        step_settings.backward(loss)
        step_settings.step(optimizer, model)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    for _ in range(args.warmup):  # includes compiling, and cudnn.benchmark's autotuning
        step()
    sync()
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    ips = args.batch_size * args.steps / seconds
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    achieved = ips * 3 * flops
    result = {"model": name, "compile": compile_model, "img_s": ips, "fwd_gflop": flops / 1e9,
              "tflops": achieved / 1e12, "mfu": achieved / peak if peak else None, "warmup_s": warmup_s,
              "precision": str(step_settings.dtype)}
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (unknown peak)"
    print(f"{name:16s} {'compiled' if compile_model else 'eager':8s} {ips:8.0f} img/s  fwd {flops / 1e9:.2f} GFLOP/img  "
          f"{achieved / 1e12:6.1f} TFLOP/s  MFU {mfu}  (autocast {step_settings.dtype}, warm-up+compile {warmup_s:.0f} s, "
          f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else 0:.1f} GiB)", flush=True)
    model = optimizer = step_settings = step = None  # free the GPU memory before the next model
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--device", default="cuda", help="cpu runs the script's code path as a smoke check, not a measurement")
    args = p.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu.py: no CUDA GPU on this machine; run it where `torch.cuda.is_available()` is true")
        sys.exit(2)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke check only)"
    print(f"{name}, torch {torch.__version__}, batch {args.batch_size}, {args.image_size} px, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    results = []
    for model_name in args.models:
        for compile_model in ([False] if args.no_compile else [False, True]):
            results.append(measure(model_name, compile_model, args, device))

    def best(model_name):
        return max((r for r in results if r["model"] == model_name), key=lambda r: r["img_s"], default=None)

    parts = []
    for model_name in args.models:
        top = best(model_name)
        eager = next(r for r in results if r["model"] == model_name and not r["compile"])
        compiled = next((r for r in results if r["model"] == model_name and r["compile"]), None)
        speedup = f", compile/eager {compiled['img_s'] / eager['img_s']:.2f}x" if compiled else ""
        mfu = f", MFU {100 * top['mfu']:.1f}%" if top["mfu"] is not None else ""
        parts.append(f"{model_name} {top['img_s']:.0f} img/s{mfu}{speedup}")
    checks = []
    if best("efficientnet_b0"):
        checks.append(best("efficientnet_b0")["img_s"] >= 3000)
    if best("resnet50") and best("resnet50")["mfu"] is not None:
        checks.append(best("resnet50")["mfu"] >= 0.15)
    verdict = "PASS" if checks and all(checks) else "FAIL"
    print(f"gpu: {'; '.join(parts)} (targets on one H100: efficientnet_b0 >= 3000 img/s, resnet50 MFU >= 15%) {verdict}")


if __name__ == "__main__":
    main()
