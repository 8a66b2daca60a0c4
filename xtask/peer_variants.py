"""The PyTorch peer's faster CPU configurations, for `cargo xtask bench`.

The model, data, batches, optimiser and loss are the peer's own (`ref_pytorch_vae.py`, loaded
from the path given by --peer); this script only changes how they run, the way a PyTorch user
tuning for speed would:

  --autocast bf16    torch.autocast("cpu"/"cuda", dtype=torch.bfloat16) around the forward + loss
  --channels-last    the model and each batch in torch.channels_last memory format
  --compile          torch.compile(model) (inductor); the compile happens in the warm-up steps,
                     whose time is reported apart as compile_s
  --profile PATH     record the timed steps with torch.profiler (CPU activity, shapes) and
                     write its Chrome trace to PATH (`cargo xtask bench --breakdown`)

Prints one JSON line: train images/s over the timed steps (after 5 warm-up steps, as the peer).
"""
import argparse, importlib.util, json, os, sys, time
import warnings

warnings.filterwarnings("ignore")


def load_peer(path):
    spec = importlib.util.spec_from_file_location("ref_pytorch_vae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, help="path of ref_pytorch_vae.py")
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--profile", help="write a torch.profiler Chrome trace of the timed steps here")
    a = ap.parse_args()
    peer = load_peer(a.peer)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    xtr = peer.load_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz")).to(dev)
    model = peer.VAE(a.latent).to(dev)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    step_model = torch.compile(model) if a.compile else model
    n = xtr.shape[0]
    perm = torch.randperm(n, device=dev)
    pos = 0

    def batch():
        nonlocal perm, pos
        if pos + a.batch > n:
            perm = torch.randperm(n, device=dev)
            pos = 0
        idx = perm[pos:pos + a.batch]
        pos += a.batch
        x = torch.bernoulli(xtr[idx].float().div_(255.0)).unsqueeze(1)
        return x.contiguous(memory_format=fmt)

    def step():
        if a.autocast == "bf16":
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = step_model(batch()).float().mean()
        else:
            loss = step_model(batch()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(5):
        step()
    sync()
    warm = time.perf_counter() - t0
    profiler = None
    if a.profile:
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
        profiler.__enter__()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    if profiler is not None:
        profiler.__exit__(None, None, None)
        profiler.export_chrome_trace(a.profile)
    name = "pytorch-" + ("compile" if a.compile else "eager")
    if a.autocast != "none":
        name += "-" + a.autocast
    if a.channels_last:
        name += "-channels-last"
    print(json.dumps({"impl": name, "torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
                      "batch": a.batch, "steps": a.steps, "seconds": round(dt, 3), "warmup_s": round(warm, 3),
                      "compile_s": round(warm, 3) if a.compile else None,
                      "train_images_per_s": round(a.steps * a.batch / dt, 1)}))


if __name__ == "__main__":
    sys.exit(main())
