"""The ladder's PyTorch peer, for `cargo xtask bench --model ladder`: the module `vae export`
writes for a ladder run (`model.py`, `LadderModel`, checked term by term against ours in
tests/export.rs), run as a PyTorch user would run it.

  train  Adam on the negative ELBO of dynamically binarised MNIST batches, from the exported
         weights; prints train images/s over the timed steps (after 5 warm-up steps).
  eval   The importance-weighted bound (`LadderModel.log_likelihood`) of the first N test
         images, binarised, one image and its k samples at a time (as `vae eval` runs on the
         CPU); prints image-samples/s and the mean estimate.

  --channels-last  the model and its inputs in torch.channels_last memory format
  --autocast bf16  train: torch.autocast("cpu", dtype=torch.bfloat16) around the forward + loss
  --profile PATH   train: record the timed steps with torch.profiler (CPU activity, shapes)
                   and write its Chrome trace to PATH (`cargo xtask bench --breakdown`)

Prints one JSON line.
"""
import argparse, gzip, importlib.util, json, math, os, struct, time
import warnings

warnings.filterwarnings("ignore")
import torch


def load_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = struct.unpack(">I", raw[:4])[0] & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def load_model(export):
    spec = importlib.util.spec_from_file_location("exported", os.path.join(export, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.CONFIG.get("kind") != "ladder":
        raise SystemExit(f"{export}: not a ladder export (kind {module.CONFIG.get('kind')!r})")
    return module.Model.from_safetensors(os.path.join(export, "model.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["train", "eval"])
    ap.add_argument("--export", required=True, help="folder written by `vae export`")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none")
    ap.add_argument("--conv-bf16-products", action="store_true",
                    help="f32 convolutions take their products in bf16 "
                         "(torch.backends.mkldnn.conv.fp32_precision = 'bf16'), as `vae eval` on AMX")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--profile", help="train: write a torch.profiler Chrome trace of the timed steps here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.conv_bf16_products:
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
    torch.manual_seed(a.seed)
    model = load_model(a.export)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    out = {"impl": "pytorch-eager" + ("-channels-last" if a.channels_last else "")
                   + ("-" + a.autocast if a.autocast != "none" else "")
                   + ("-conv-bf16-products" if a.conv_bf16_products else ""),
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    if a.task == "train":
        xtr = load_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz"))
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=a.lr)
        n = xtr.shape[0]

        def batch():
            idx = torch.randint(n, (a.batch,))
            x = torch.bernoulli(xtr[idx].float().div_(255.0)).unsqueeze(1)
            return x.contiguous(memory_format=fmt)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
                loss = -model.elbo(batch())[0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(5):
            step()
        profiler = None
        if a.profile:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            profiler.__enter__()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        dt = time.perf_counter() - t0
        if profiler is not None:
            profiler.__exit__(None, None, None)
            profiler.export_chrome_trace(a.profile)
        out.update(steps=a.steps, batch=a.batch, seconds=round(dt, 3),
                   train_images_per_s=round(a.steps * a.batch / dt, 1))
    else:
        xte = load_idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"))
        images = min(a.images, xte.shape[0])
        chunk = min(1024, a.k)  # rows per chunk: one image's samples, as `vae eval` on the CPU
        total = 0.0
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(images):
                x = torch.bernoulli(xte[i:i + 1].float().div(255.0)).unsqueeze(1)
                total += model.log_likelihood(x.contiguous(memory_format=fmt), k=a.k, chunk=chunk).sum().item()
        dt = time.perf_counter() - t0
        out.update(k=a.k, images=images, seconds=round(dt, 3),
                   image_samples_per_s=round(a.k * images / dt, 1),
                   log_likelihood=total / images)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
