"""PyTorch reference train steps of the three stages (the same work as the JAX steps).

Benchmark use only (``bench/bench_train.py``); the package does not depend on torch.
Each ``make_*(device)`` builds its modules on ``device`` ("cpu" or "cuda") and returns
``step(audio, digit, gender) -> float`` (tensors on that device; the returned float waits for
the device), doing, like the original code:

- classifier: Audio2Mel + normalisation, AlexNet (K=10) forward/backward, Adam.
- vocoder: Audio2Mel; D update (hinge) on real and detached fake; G update (hinge +
  10 x feature matching against the pre-update real features).
- pcmelgan: the four updates (F, G on a fresh F pass, FD, GD) plus the fixed
  classifiers' monitoring forwards on F's and G's outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import torch_reference as tr


def _adam(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))


def make_classifier_step(device: str = "cpu"):
    with torch.device(device):
        return _classifier_step(device)


def _classifier_step(device: str):
    mel = tr.Audio2Mel().to(device)  # its mel basis is a NumPy-made buffer
    net = tr.AlexNet(10).train()
    opt = _adam(net, 1e-4)

    def step(audio, digit, gender):
        with torch.no_grad():
            x = tr.normalize_mel(mel(audio))[0][:, None]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), digit)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def make_vocoder_step(device: str = "cpu"):
    with torch.device(device):
        return _vocoder_step(device)


def _vocoder_step(device: str):
    mel = tr.Audio2Mel().to(device)  # its mel basis is a NumPy-made buffer
    gen, disc = tr.build_network("melgan_generator"), tr.build_network("melgan_discriminator")
    gen.train()
    disc.train()
    opt_g, opt_d = _adam(gen, 1e-4), _adam(disc, 1e-4)
    n_layers, num_d = 4, 3
    wt = (1.0 / num_d) * (4.0 / (n_layers + 1))

    def step(audio, digit, gender):
        x = audio[:, None]
        with torch.no_grad():
            s = mel(audio)
        fake = gen(s)
        d_fake_det = disc(fake.detach())
        d_real = disc(x)
        loss_d = sum(
            F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean()
            for r, f in zip(d_real, d_fake_det, strict=True)
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        d_fake = disc(fake)
        loss_g = sum(-f[-1].mean() for f in d_fake)
        loss_feat = 0
        for i in range(num_d):
            for j in range(len(d_fake[i]) - 1):
                loss_feat = loss_feat + wt * F.l1_loss(d_fake[i][j], d_real[i][j].detach())
        opt_g.zero_grad(set_to_none=True)
        (loss_g + 10 * loss_feat).backward()
        opt_g.step()
        return loss_g.item()

    return step


def make_pcmelgan_step(device: str = "cpu", eps: float = 0.05, lamb: float = 100.0,
                       noise_dim: int = 10):
    with torch.device(device):
        return _pcmelgan_step(torch.device(device), eps, lamb, noise_dim)


def _pcmelgan_step(device: torch.device, eps: float, lamb: float, noise_dim: int):
    mel = tr.Audio2Mel().to(device)  # its mel basis is a NumPy-made buffer
    filt, gen = tr.UNet(conditional=False).train(), tr.UNet(conditional=True).train()
    fd, gd = tr.AlexNet(2).train(), tr.AlexNet(3).train()
    digit_cls, gender_cls = tr.AlexNet(10).eval(), tr.AlexNet(2).eval()
    opt_f, opt_g = _adam(filt, 1e-4), _adam(gen, 1e-4)
    opt_fd, opt_gd = _adam(fd, 4e-4), _adam(gd, 4e-4)

    def step(audio, digit, gender):
        with torch.no_grad():
            x = tr.normalize_mel(mel(audio))[0][:, None]
        b = x.shape[0]
        # (1) filter
        x1 = filt(x, torch.randn(b, noise_dim, device=device))
        dist = F.l1_loss(x1, x)
        loss_f = F.cross_entropy(fd(x1), 1 - gender) + lamb * F.relu(dist - eps) ** 2
        opt_f.zero_grad(set_to_none=True)
        loss_f.backward()
        opt_f.step()
        # (2) generator on a fresh filter pass
        x1 = filt(x, torch.randn(b, noise_dim, device=device)).detach()
        s_prime = torch.randint(0, 2, (b,), device=device)
        x2 = gen(x1, torch.randn(b, noise_dim, device=device), s_prime)
        loss_g = F.cross_entropy(gd(x2), s_prime) + lamb * F.relu(F.l1_loss(x2, x) - eps) ** 2
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        # (3) FD
        loss_fd = F.cross_entropy(fd(x1), gender)
        opt_fd.zero_grad(set_to_none=True)
        loss_fd.backward()
        opt_fd.step()
        # (4) GD
        x2 = x2.detach()
        loss_gd = 0.5 * (
            F.cross_entropy(gd(x), gender)
            + F.cross_entropy(gd(x2), torch.full((b,), 2, dtype=torch.long, device=device))
        )
        opt_gd.zero_grad(set_to_none=True)
        loss_gd.backward()
        opt_gd.step()
        # monitoring: fixed classifiers on F's and G's outputs
        with torch.no_grad():
            for y in (x1, x2):
                digit_cls(y).argmax(-1)
                gender_cls(y).argmax(-1)
        return loss_f.item()

    return step


STEPS = {
    "classifier": make_classifier_step,
    "vocoder": make_vocoder_step,
    "pcmelgan": make_pcmelgan_step,
}
