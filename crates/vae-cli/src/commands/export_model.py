"""A vae-rs model as a PyTorch module, written by `vae export`.

Self-contained: it needs only `torch`. The weights are the `model.safetensors` written beside
this file, under vae-rs's own variable names; CONFIG is the model's configuration as vae-rs
stores it.

    from model import Model
    model = Model.from_safetensors("model.safetensors")
    log_px = model.log_likelihood(x, k=1000)    # x: [N, C, H, W] in [0, 1]

`Model` is the class of the exported kind: `ConvModel` or `LadderModel`.

The maths follows vae-rs's `ConvVae` op for op: an encoder of stride-2 4x4 convs (each
followed by residual blocks) and a dense head giving the posterior's mean and log-variance,
a decoder mirroring it (optionally sharing the encoder's conv weights) that gives the
parameters of its likelihood (Bernoulli, discretised logistic mixture or continuous Bernoulli),
an optional PixelCNN-style head over those parameters, and a standard-normal or VampPrior
prior. `LadderModel` follows its `LadderVae`: a top-down hierarchy of latent groups (a
bottom-up path of residual cells, then from a vector top group down through each resolution a
prior from the top-down features and a posterior correcting it from the bottom-up ones, NVAE
§3.2), whose `elbo` also gives each group's KL, with the same optional pixel head.
"""

import json
import math
import struct

import torch
import torch.nn.functional as F
from torch import nn

CONFIG = json.loads(r"""__CONFIG__""")

LN_2PI = math.log(2 * math.pi)


def _read_safetensors(path):
    """The float32 tensors of a safetensors file, by name (no `safetensors` package needed)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        if v["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {v['dtype']}, expected F32")
        a, b = v["data_offsets"]
        data = bytearray(raw[8 + n + a : 8 + n + b])
        out[name] = torch.frombuffer(data, dtype=torch.float32).reshape(v["shape"]).clone()
    return out


class ResBlock(nn.Module):
    """x -> x + Conv3x3(ReLU(Conv3x3(x))), then ReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def pre_activation(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))

    def forward(self, x):
        return F.relu(self.pre_activation(x))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c_in = cfg["input_channels"]
        for i, c in enumerate(cfg["channels"]):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c_in, c, 4, stride=2, padding=1))
            setattr(self, f"block{i + 1}", nn.ModuleList(ResBlock(c) for _ in range(cfg["res_blocks"])))
            c_in = c
        self.levels = len(cfg["channels"])
        factor = 2 ** self.levels
        flat = c_in * (cfg["input_height"] // factor) * (cfg["input_width"] // factor)
        hidden = cfg["hidden_dim"]
        self.hidden = nn.Linear(flat, hidden) if hidden else None
        self.head = nn.Linear(hidden or flat, 2 * cfg["latent_dim"])

    def forward(self, x):
        h = x
        for i in range(self.levels):
            if i > 0:
                h = F.relu(h)
            h = getattr(self, f"conv{i + 1}")(h)
            for block in getattr(self, f"block{i + 1}"):
                h = block.pre_activation(F.relu(h))
        h = F.relu(h.flatten(1))
        if self.hidden is not None:
            h = F.relu(self.hidden(h))
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar


class Deconv(nn.Module):
    """A stride-2 4x4 transposed conv; with tied weights only its bias is its own."""

    def __init__(self, c_in, c_out, tied):
        super().__init__()
        self.weight = None if tied else nn.Parameter(torch.empty(c_in, c_out, 4, 4))
        self.bias = nn.Parameter(torch.empty(c_out))

    def forward(self, x, weight=None):
        w = self.weight if self.weight is not None else weight
        return F.conv_transpose2d(x, w, self.bias, stride=2, padding=1)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        chans = cfg["channels"]
        self.grid = (chans[-1], cfg["input_height"] // 2 ** len(chans), cfg["input_width"] // 2 ** len(chans))
        hidden = cfg["hidden_dim"]
        self.hidden = nn.Linear(cfg["latent_dim"], hidden) if hidden else None
        self.fc = nn.Linear(hidden or cfg["latent_dim"], self.grid[0] * self.grid[1] * self.grid[2])
        outs = list(reversed(chans))[1:] + [cfg["input_channels"] * params_per_channel(cfg["likelihood"])]
        c_in = chans[-1]
        self.levels = len(outs)
        for i, c in enumerate(outs):
            setattr(self, f"block{i + 1}", nn.ModuleList(ResBlock(c_in) for _ in range(cfg["res_blocks"])))
            setattr(self, f"deconv{i + 1}", Deconv(c_in, c, cfg["tie_weights"]))
            c_in = c
        self.pixel_head = _pixel_head(cfg)

    def forward(self, z, encoder):
        t = z
        if self.hidden is not None:
            t = F.relu(self.hidden(t))
        t = F.relu(self.fc(t)).view(-1, *self.grid)
        for i in range(self.levels):
            for block in getattr(self, f"block{i + 1}"):
                t = block(t)
            # deconv1 mirrors the last encoder conv, deconv2 the one before, ...
            tied = getattr(encoder, f"conv{encoder.levels - i}").weight
            t = getattr(self, f"deconv{i + 1}")(t, tied)
            if i < self.levels - 1:
                t = F.relu(t)
        return t


def _raster_mask(k, include_centre):
    c = k // 2
    m = torch.zeros(1, 1, k, k)
    for i in range(k):
        for j in range(k):
            if i < c or (i == c and j < c) or (include_centre and i == c and j == c):
                m[0, 0, i, j] = 1.0
    return m


class MaskedConv(nn.Module):
    def __init__(self, c_in, c_out, k, include_centre):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.empty(c_out))
        self.register_buffer("mask", _raster_mask(k, include_centre), persistent=False)
        self.k = k

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.k // 2)


class PixelCnn(nn.Module):
    """p(x_i | x_<i, z) = p(x_i | d_i(z) + g_i(x_<i, d(z))) (PixelVAE-style head), for a
    decoder of `params` outputs per pixel (the likelihood's parameters)."""

    def __init__(self, c, layers, params):
        super().__init__()
        self.first = MaskedConv(1, c, 7, False)
        self.condition = nn.Conv2d(params, c, 1)
        for i in range(1, layers):
            setattr(self, f"layer{i}", MaskedConv(c, c, 3, True))
        self.n_layers = layers - 1
        self.out = nn.Conv2d(c, params, 1)

    def forward(self, x, base):
        h = F.relu(self.first(x) + self.condition(base))
        for i in range(1, self.n_layers + 1):
            h = F.relu(h + getattr(self, f"layer{i}")(h))
        return base + self.out(h)

    def sample(self, base, likelihood):
        """Each pixel's mean given the pixels drawn before it, one at a time, [N, 1, H, W]."""
        n, _, h, w = base.shape
        x = torch.zeros(n, 1, h, w)
        means = torch.zeros(n, 1, h, w)
        for i in range(h):
            for j in range(w):
                here = self.forward(x[:, :, : i + 1], base[:, :, : i + 1])[:, :, i : i + 1, j : j + 1]
                means[:, :, i : i + 1, j : j + 1] = likelihood_mean(likelihood, here)
                x[:, :, i : i + 1, j : j + 1] = likelihood_sample(likelihood, here)
        return means


def _pixel_head(cfg):
    """The config's pixel head (a PixelCnn), or None."""
    head = cfg.get("pixel_head")
    if not head:
        return None
    return PixelCnn(head["channels"], head["layers"], params_per_channel(cfg["likelihood"]))


def params_per_channel(likelihood):
    """Decoder outputs per image channel."""
    if likelihood["kind"] == "logistic":
        return 3 * likelihood["components"]
    return 1


def bernoulli_nll(logits, x):
    """-log p(x | logits) summed over pixels, one value per image."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)


def _continuous_bernoulli_log_norm(logits):
    """log(l / tanh(l/2)), the continuous Bernoulli's log-normaliser, and log 2 + l^2/12 near 0."""
    near = logits.abs() < 1e-2
    safe = torch.where(near, torch.ones_like(logits), logits)
    exact = torch.log(safe / torch.tanh(safe * 0.5))
    taylor = logits.pow(2) / 12.0 + math.log(2)
    return torch.where(near, taylor, exact)


def _logistic_parts(params, k):
    n, _, h, w = params.shape
    p = params.view(n, -1, 3, k, h, w)
    return p[:, :, 0], p[:, :, 1], p[:, :, 2].clamp(min=-7.0)


def _logistic_nll(params, x, k):
    """-log of the discretised logistic mixture's mass at x (256 levels, edge bins open)."""
    logits, means, log_scales = _logistic_parts(params, k)
    x = (x * 2.0 - 1.0).unsqueeze(2)
    centred = x - means
    inv_s = torch.exp(-log_scales)
    plus_in = inv_s * (centred + 1.0 / 255.0)
    min_in = inv_s * (centred - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centred
    log_pdf_mid = mid_in - log_scales - F.softplus(mid_in) * 2.0 - math.log(127.5)
    log_mass = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    log_probs = torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_mass)
    )
    mixed = torch.logsumexp(log_probs + F.log_softmax(logits, dim=2), dim=2)
    return -mixed.flatten(1).sum(-1)


def likelihood_nll(likelihood, params, x):
    """-log p(x | params) summed over pixels and channels, one value per image."""
    kind = likelihood["kind"]
    if kind == "bernoulli":
        return bernoulli_nll(params, x)
    if kind == "continuous-bernoulli":
        return bernoulli_nll(params, x) - _continuous_bernoulli_log_norm(params).flatten(1).sum(-1)
    if kind == "logistic":
        return _logistic_nll(params, x, likelihood["components"])
    raise ValueError(f"unknown likelihood {kind!r}")


def likelihood_mean(likelihood, params):
    """E[x | params] in [0, 1]."""
    kind = likelihood["kind"]
    if kind == "bernoulli":
        return torch.sigmoid(params)
    if kind == "continuous-bernoulli":
        near = params.abs() < 1e-2
        safe = torch.where(near, torch.ones_like(params), params)
        exact = 1.0 / (-torch.expm1(-safe)) - 1.0 / safe
        return torch.where(near, params / 12.0 + 0.5, exact)
    if kind == "logistic":
        logits, means, _ = _logistic_parts(params, likelihood["components"])
        m = (torch.softmax(logits, dim=2) * means.clamp(-1.0, 1.0)).sum(2)
        return ((m + 1.0) * 0.5).clamp(0.0, 1.0)
    raise ValueError(f"unknown likelihood {kind!r}")


def likelihood_sample(likelihood, params):
    """A draw x ~ p(x | params) in [0, 1] (logistic: on the 256 levels)."""
    kind = likelihood["kind"]
    if kind == "bernoulli":
        return torch.bernoulli(torch.sigmoid(params))
    if kind == "continuous-bernoulli":
        u = torch.rand_like(params).clamp(1e-6, 1.0 - 1e-6)
        near = params.abs() < 1e-4
        safe = torch.where(near, torch.ones_like(params), params)
        return torch.where(near, u, torch.log1p(u * torch.expm1(safe)) / safe).clamp(0.0, 1.0)
    if kind == "logistic":
        logits, means, log_scales = _logistic_parts(params, likelihood["components"])
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-5, 1.0 - 1e-5)))
        pick = (logits + gumbel).argmax(2, keepdim=True)
        mu = means.gather(2, pick).squeeze(2)
        ls = log_scales.gather(2, pick).squeeze(2)
        u = torch.rand_like(mu).clamp(1e-5, 1.0 - 1e-5)
        x = mu + torch.exp(ls) * (torch.log(u) - torch.log1p(-u))
        return (((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 255.0).clamp(0.0, 1.0)
    raise ValueError(f"unknown likelihood {kind!r}")


def normal_log_density(z, mu, logvar):
    """log N(z; mu, diag exp(logvar)) summed over the last dimension."""
    return ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LN_2PI).sum(-1) * -0.5


def mixture_log_density(z, mu, logvar):
    """log (1/K sum_k N(z; mu_k, diag exp(logvar_k))) for rows z [M, D] of K components [K, D],
    with the squares expanded so no [M, K, D] tensor is built."""
    k, d = mu.shape
    precision = torch.exp(-logvar)
    quad = (
        z.pow(2) @ precision.T
        - (z @ (mu * precision).T) * 2.0
        + (mu.pow(2) * precision + logvar).sum(-1)
    )
    return torch.logsumexp((quad + d * LN_2PI) * -0.5, -1) - math.log(k)


class Prior(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        prior = cfg["prior"]
        self.kind = prior["kind"]
        if self.kind == "vamp":
            shape = (prior["components"], cfg["input_channels"], cfg["input_height"], cfg["input_width"])
            self.pseudo_inputs = nn.Parameter(torch.empty(shape))


class _Exported(nn.Module):
    """What both kinds share: loading, and the prior over z (the top group's, for the ladder)
    from `self.prior` and `self.encode`."""

    @classmethod
    def from_safetensors(cls, path, config=None):
        """The model with the weights of a safetensors file written by `vae export`."""
        model = cls(config)
        model.load_state_dict(_read_safetensors(path))
        return model.eval()

    def _prior_components(self):
        return self.encode(torch.sigmoid(self.prior.pseudo_inputs))

    def log_prior(self, z):
        """log p(z) for latents [..., latent]."""
        if self.prior.kind == "standard":
            return (z.pow(2) + LN_2PI).sum(-1) * -0.5
        mu, logvar = self._prior_components()
        flat = z.reshape(-1, z.shape[-1])
        return mixture_log_density(flat, mu, logvar).view(z.shape[:-1])

    def _likelihood_params(self, x, base):
        """The likelihood's parameters for images x given the decoder's outputs base (refined
        by the pixel head, if any, from the pixels before each one)."""
        head = self._pixel_head()
        return base if head is None else head(x, base)

    def _means(self, base):
        """The likelihood's means (with a pixel head: drawn pixel by pixel)."""
        head = self._pixel_head()
        if head is None:
            return likelihood_mean(self.config["likelihood"], base)
        return head.sample(base, self.config["likelihood"])

    def _sample_prior(self, n, dim, temperature):
        """n latents from the prior, the Gaussian noise scaled by temperature."""
        eps = torch.randn(n, dim) * temperature
        if self.prior.kind == "standard":
            return eps
        mu, logvar = self._prior_components()
        pick = torch.randint(mu.shape[0], (n,))
        return mu[pick] + torch.exp(0.5 * logvar[pick]) * eps


class ConvModel(_Exported):
    """The exported conv VAE: `elbo`, `log_likelihood`, `sample`, `reconstruct`."""

    def __init__(self, config=None):
        super().__init__()
        cfg = config or CONFIG
        if cfg.get("kind", "conv") != "conv":
            raise ValueError(f"this module implements the conv VAE, not {cfg['kind']!r}")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.prior = Prior(cfg)

    def encode(self, x):
        """q(z | x): means and log-variances, [N, latent] each."""
        return self.encoder(x)

    def decode(self, z):
        """The likelihood's parameters for latents z (with a pixel head: its conditioning)."""
        return self.decoder(z, self.encoder)

    def _pixel_head(self):
        return self.decoder.pixel_head

    def elbo(self, x, eps=None):
        """Per-image ELBO terms at noise eps ~ N(0, I) ([N, latent]; drawn if not given):
        (elbo, reconstruction = -log p(x | z), kl), each [N]."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = likelihood_nll(self.config["likelihood"], self._likelihood_params(x, self.decode(z)), x)
        if self.prior.kind == "standard":
            kl = (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1) * 0.5
        else:
            kl = normal_log_density(z, mu, logvar) - self.log_prior(z)
        return -(rec + kl), rec, kl

    @torch.no_grad()
    def log_likelihood(self, x, k=1000, chunk=100):
        """The importance-weighted estimate of log p(x) with k samples per image, [N] (nats)."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        n = x.shape[0]
        weights = []
        done = 0
        while done < k:
            s = min(chunk, k - done)
            eps = torch.randn(s, n, mu.shape[1])
            z = mu + eps * std
            images = x.unsqueeze(0).expand(s, *x.shape).reshape(s * n, *x.shape[1:])
            logits = self._likelihood_params(images, self.decode(z.reshape(s * n, -1)))
            log_px = -likelihood_nll(self.config["likelihood"], logits, images).view(s, n)
            log_qz = (eps.pow(2) + logvar + LN_2PI).sum(-1) * -0.5
            weights.append(log_px + self.log_prior(z) - log_qz)
            done += s
        w = torch.cat(weights, 0)
        return torch.logsumexp(w, 0) - math.log(k)

    @torch.no_grad()
    def sample(self, n, temperature=1.0):
        """n images from the prior (pixel probabilities), [n, C, H, W]."""
        z = self._sample_prior(n, self.config["latent_dim"], temperature)
        return self._means(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x):
        """Pixel probabilities of the reconstruction of x through the posterior mean."""
        mu, _ = self.encode(x)
        return self._means(self.decode(mu))


def _silu(x):
    return F.silu(x)


def _soft_clamp(x, bound=5.0):
    """NVAE's soft clamp, b tanh(x / b)."""
    return torch.tanh(x / bound) * bound


def _conv3(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class Cell(nn.Module):
    """x + Conv3x3(SiLU(Conv3x3(SiLU(x)))): the ladder's pre-activation residual cell."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = _conv3(c, c)
        self.conv2 = _conv3(c, c)

    def forward(self, x):
        return x + self.conv2(_silu(self.conv1(_silu(x))))


def _level(c, cells, stages=1):
    """A resolution's cells, in `stages` stages (one per latent group): the first stage's
    cells on the level itself, the others' under stage2, stage3, ... (vae-rs's names)."""
    level = nn.Module()
    for j in range(cells):
        setattr(level, f"cell{j + 1}", Cell(c))
    level.n_cells = cells
    for j in range(1, stages):
        setattr(level, f"stage{j + 1}", _level(c, cells))
    level.n_stages = stages
    return level


def _stages(level):
    """A level's stages in order, each a module with its cells (and, top-down, its group)."""
    return [level] + [getattr(level, f"stage{j + 1}") for j in range(1, level.n_stages)]


def _cells(level, h):
    for j in range(level.n_cells):
        h = getattr(level, f"cell{j + 1}")(h)
    return h


class LadderModel(_Exported):
    """The exported hierarchical VAE: `elbo` (with each group's KL), `log_likelihood`,
    `sample`, `reconstruct`. Through `encode`/`decode`, z is the top group."""

    def __init__(self, config=None):
        super().__init__()
        cfg = config or CONFIG
        if cfg.get("kind") != "ladder":
            raise ValueError(f"this module implements the ladder VAE, not {cfg.get('kind')!r}")
        self.config = cfg
        ch, groups, cells = cfg["channels"], cfg["group_channels"], cfg["cells"]
        stages = cfg.get("groups") or [1] * len(ch)
        c_in = cfg["input_channels"]
        last = len(ch) - 1
        h, w = self._resolution(last)
        flat = ch[last] * h * w
        self.bottom_up = nn.Module()
        self.top_down = nn.Module()
        self.bottom_up.stem = nn.Conv2d(c_in, ch[0], 4, stride=2, padding=1)
        for l, c in enumerate(ch):
            name = f"level{l + 1}"
            setattr(self.bottom_up, name, _level(c, cells[l], stages[l]))
            td = _level(c, cells[l], stages[l])
            if groups[l] > 0:
                for stage in _stages(td):
                    stage.prior = _conv3(c, 2 * groups[l])
                    stage.posterior = _conv3(2 * c, 2 * groups[l])
                    stage.inject = nn.Conv2d(groups[l], c, 1)
            setattr(self.top_down, name, td)
            if l < last:
                setattr(self.bottom_up, f"down{l + 1}", nn.Conv2d(c, ch[l + 1], 4, stride=2, padding=1))
                setattr(self.top_down, f"up{l + 1}", nn.ConvTranspose2d(ch[l + 1], c, 4, stride=2, padding=1))
        self.bottom_up.top = nn.Linear(flat, 2 * cfg["top_dim"])
        self.top_down.fc = nn.Linear(cfg["top_dim"], flat)
        self.top_down.out = nn.ConvTranspose2d(
            ch[0], c_in * params_per_channel(cfg["likelihood"]), 4, stride=2, padding=1
        )
        self.top_down.pixel_head = _pixel_head(cfg)
        self.prior = Prior({**cfg, "prior": cfg["top_prior"]})

    def _pixel_head(self):
        return self.top_down.pixel_head

    def _resolution(self, level):
        f = 2 ** (level + 1)
        return self.config["input_height"] // f, self.config["input_width"] // f

    def _bottom_up(self, x):
        ch = self.config["channels"]
        h = self.bottom_up.stem(x)
        features = []
        for l in range(len(ch)):
            level = []
            for stage in _stages(getattr(self.bottom_up, f"level{l + 1}")):
                h = _cells(stage, h)
                level.append(h)
            features.append(level)
            if l < len(ch) - 1:
                h = getattr(self.bottom_up, f"down{l + 1}")(_silu(h))
        mu, logvar = self.bottom_up.top(_silu(h).flatten(1)).chunk(2, 1)
        return features, mu, logvar

    def encode(self, x):
        """q(z_top | x): means and log-variances, [N, top_dim] each."""
        _, mu, logvar = self._bottom_up(x)
        return mu, logvar

    def _top_down(self, z_top, features=None, noise=None, temperature=None):
        """The likelihood's parameters from z_top, each group's z drawn from the posterior
        (with `features`, each resolution's after each bottom-up stage: a resolution's first
        group reads the last) or the prior: at the given `noise` (one [N, c, h, w] per group,
        coarsest first), fresh noise scaled by `temperature`, or else the mean. Also each
        group's (posterior or None, prior) as (mu, logvar) pairs, coarsest first."""
        cfg = self.config
        ch, groups = cfg["channels"], cfg["group_channels"]
        last = len(ch) - 1
        h, w = self._resolution(last)
        d = self.top_down.fc(z_top).view(-1, ch[last], h, w)
        draws = []
        for l in range(last, -1, -1):
            if l < last:
                d = getattr(self.top_down, f"up{l + 1}")(_silu(d))
            stages = _stages(getattr(self.top_down, f"level{l + 1}"))
            for j, stage in enumerate(stages):
                if groups[l] > 0:
                    a = _silu(d)
                    raw_mu, raw_ls = stage.prior(a).chunk(2, 1)
                    prior = (_soft_clamp(raw_mu), _soft_clamp(raw_ls) * 2.0)
                    post = None
                    if features is not None:
                        both = torch.cat([a, _silu(features[l][len(stages) - 1 - j])], 1)
                        d_mu, d_ls = stage.posterior(both).chunk(2, 1)
                        post = (_soft_clamp(prior[0] + d_mu), _soft_clamp(prior[1] * 0.5 + d_ls) * 2.0)
                    mu, logvar = post if post is not None else prior
                    if noise is not None:
                        z = mu + torch.exp(logvar * 0.5) * noise[len(draws)]
                    elif temperature is not None:
                        z = mu + torch.exp(logvar * 0.5) * (torch.randn_like(mu) * temperature)
                    else:
                        z = mu
                    d = d + stage.inject(z)
                    draws.append((z, post, prior))
                d = _cells(stage, d)
        return self.top_down.out(_silu(d)), draws

    def decode(self, z):
        """The likelihood's parameters with the top group at z and every lower group at its
        prior mean."""
        return self._top_down(z)[0]

    def _split_noise(self, eps):
        cfg = self.config
        n = eps.shape[0]
        sizes, shapes = [cfg["top_dim"]], []
        for l in range(len(cfg["channels"]) - 1, -1, -1):
            g = cfg["group_channels"][l]
            if g > 0:
                h, w = self._resolution(l)
                for _ in range((cfg.get("groups") or [1] * len(cfg["channels"]))[l]):
                    sizes.append(g * h * w)
                    shapes.append((n, g, h, w))
        parts = eps.split(sizes, 1)
        return parts[0], [p.reshape(s) for p, s in zip(parts[1:], shapes)]

    def elbo(self, x, eps=None):
        """Per-image ELBO terms at noise eps ~ N(0, I) ([N, noise_dim]: the top group's, then
        each spatial group's, coarsest first, flattened; drawn if not given): (elbo,
        reconstruction, kl, [kl of each group, the top first]), each [N]."""
        features, mu, logvar = self._bottom_up(x)
        if eps is None:
            eps_top, noise, temperature = torch.randn_like(mu), None, 1.0
        else:
            (eps_top, noise), temperature = self._split_noise(eps), None
        z_top = mu + torch.exp(0.5 * logvar) * eps_top
        params, draws = self._top_down(z_top, features, noise, temperature)
        if self.prior.kind == "standard":
            kl_top = (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1) * 0.5
        else:
            kl_top = (eps_top.pow(2) + logvar + LN_2PI).sum(-1) * -0.5 - self.log_prior(z_top)
        kls = [kl_top]
        for _, (q_mu, q_lv), (p_mu, p_lv) in draws:
            kl = ((q_lv.exp() + (q_mu - p_mu).pow(2)) * torch.exp(-p_lv) + p_lv - q_lv - 1.0) * 0.5
            kls.append(kl.flatten(1).sum(-1))
        rec = likelihood_nll(self.config["likelihood"], self._likelihood_params(x, params), x)
        kl = torch.stack(kls, 1).sum(-1)
        return -(rec + kl), rec, kl, kls

    @torch.no_grad()
    def log_likelihood(self, x, k=1000, chunk=100):
        """The importance-weighted estimate of log p(x) with k samples per image, [N] (nats):
        log p(x, z) - log q(z | x) summed over every group."""
        features, mu, logvar = self._bottom_up(x)
        n = x.shape[0]
        weights = []
        done = 0
        while done < k:
            s = min(chunk, k - done)
            rep = lambda t: t.unsqueeze(0).expand(s, *t.shape).reshape(s * t.shape[0], *t.shape[1:])
            m, lv = rep(mu), rep(logvar)
            eps = torch.randn_like(m)
            z_top = m + torch.exp(0.5 * lv) * eps
            params, draws = self._top_down(z_top, [[rep(f) for f in level] for level in features], None, 1.0)
            images = rep(x)
            log_px = -likelihood_nll(self.config["likelihood"], self._likelihood_params(images, params), images)
            log_q = (eps.pow(2) + lv + LN_2PI).sum(-1) * -0.5
            log_p = self.log_prior(z_top)
            for z, (q_mu, q_lv), (p_mu, p_lv) in draws:
                log_q = log_q + normal_log_density(z.flatten(1), q_mu.flatten(1), q_lv.flatten(1))
                log_p = log_p + normal_log_density(z.flatten(1), p_mu.flatten(1), p_lv.flatten(1))
            weights.append((log_px + log_p - log_q).view(s, n))
            done += s
        w = torch.cat(weights, 0)
        return torch.logsumexp(w, 0) - math.log(k)

    @torch.no_grad()
    def sample(self, n, temperature=1.0):
        """n images from the prior (the likelihood's means), every group's noise scaled by
        temperature, [n, C, H, W]."""
        z = self._sample_prior(n, self.config["top_dim"], temperature)
        return self._means(self._top_down(z, None, None, temperature)[0])

    @torch.no_grad()
    def reconstruct(self, x):
        """The likelihood's means through the posterior means of every group."""
        features, mu, _ = self._bottom_up(x)
        return self._means(self._top_down(mu, features)[0])


# The class of the kind this file was exported for.
Model = LadderModel if CONFIG.get("kind") == "ladder" else ConvModel
