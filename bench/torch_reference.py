"""PyTorch reference modules of the original PCMelGAN / MelGAN networks.

These reproduce the original architectures with the original ``state_dict`` key names, so
the golden vectors in ``parity/*.npz`` (and the original ``.pt`` checkpoints) load with
``strict=True``. They exist for verification and for the JAX-vs-PyTorch benchmark only; the
project itself does not depend on torch.

Shapes are PyTorch's (NCHW / NCW):

- ``Audio2Mel``: audio (B, 8192) or (B, 1, 8192) -> log-mel (B, 80, 32).
- ``UNet``: x (B, 1, 80, 32), z (B, 10), cond (B,) long -> (B, 1, 80, 32).
- ``AlexNet``: x (B, 1, 80, 32) -> logits (B, K).
- ``AudioNet``: audio (B, 1, 8192) -> (logits (B, K), features (B, 64, 128)).
- ``MelGANGenerator``: log-mel (B, 80, 32) -> audio (B, 1, 8192).
- ``MelGANDiscriminator``: audio (B, 1, 8192) -> per scale, the list of layer outputs (B, C, T).

Also: ``build_network`` (default initialisation, as in the original), ``forward`` /
``loss_fn`` / ``make_train_step`` (forward, loss, backward, Adam with betas (0.5, 0.9)) for
the benchmark in ``bench/bench_models.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NETWORKS",
    "AlexNet",
    "Audio2Mel",
    "AudioNet",
    "MelGANDiscriminator",
    "MelGANGenerator",
    "UNet",
    "build_network",
    "forward",
    "load_parity_state_dict",
    "loss_fn",
    "make_train_step",
    "normalize_mel",
]

NETWORKS = (
    "unet_filter",
    "unet_generator",
    "alexnet",
    "audionet",
    "melgan_generator",
    "melgan_discriminator",
)


def weight_norm(module: nn.Module) -> nn.Module:
    """Old-style ``torch.nn.utils.weight_norm`` (keys ``weight_g`` / ``weight_v``, dim 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


# --------------------------------------------------------------------------------------------
# 1. Audio features
# --------------------------------------------------------------------------------------------


class Audio2Mel(nn.Module):
    """MelGAN's ``Audio2Mel`` at 8 kHz: (B, 8192) or (B, 1, 8192) -> log10 mel (B, 80, 32)."""

    def __init__(
        self,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        sampling_rate: int = 8000,
        n_mel_channels: int = 80,
        mel_fmin: float = 0.0,
        mel_fmax: float | None = None,
    ):
        super().__init__()
        import librosa

        basis = librosa.filters.mel(
            sr=sampling_rate, n_fft=n_fft, n_mels=n_mel_channels, fmin=mel_fmin, fmax=mel_fmax
        )
        self.register_buffer("mel_basis", torch.from_numpy(basis).float())
        self.register_buffer("window", torch.hann_window(win_length).float())
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() == 2:
            audio = audio.unsqueeze(1)
        p = (self.n_fft - self.hop_length) // 2
        audio = F.pad(audio, (p, p), "reflect").squeeze(1)
        spec = torch.stft(
            audio,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )
        magnitude = torch.sqrt(spec.real**2 + spec.imag**2)
        mel = torch.matmul(self.mel_basis, magnitude)
        return torch.log10(torch.clamp(mel, min=1e-5))


def normalize_mel(
    log_mel: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-utterance normalisation. (B, 80, 32) -> (normalised (B, 80, 32), mean (B,), std (B,)).

    ``clip((S - mean) / (3 std + 1e-6), -1, 1)``, std unbiased over all 80 x 32 values.
    """
    flat = log_mel.reshape(log_mel.shape[0], -1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=True)
    x = (log_mel - mean[:, None, None]) / (3 * std[:, None, None] + 1e-6)
    return torch.clamp(x, -1.0, 1.0), mean, std


# --------------------------------------------------------------------------------------------
# 2. U-Net filter / generator
# --------------------------------------------------------------------------------------------


def _double_conv(c_in: int, c_out: int, kernel_size: int = 3) -> nn.Sequential:
    """(WN-Conv2d -> BatchNorm2d -> ReLU) x 2; keys 0 / 1 / 3 / 4."""
    return nn.Sequential(
        weight_norm(nn.Conv2d(c_in, c_out, kernel_size, padding=1)),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        weight_norm(nn.Conv2d(c_out, c_out, kernel_size, padding=1)),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class UNet(nn.Module):
    """The original ``UNetFilter`` (F: conditional=False, G: conditional=True).

    x (B, 1, 80, 32), z (B, noise_dim), cond (B,) long or None -> (B, 1, 80, 32) in [-1, 1].
    Both variants own the conditioning layers (``embed_condition``, ``project_cond``); the
    filter never uses them.
    """

    def __init__(
        self,
        conditional: bool,
        chs: tuple[int, ...] = (8, 16, 32, 64, 128),
        height: int = 80,
        width: int = 32,
        noise_dim: int = 10,
        num_classes: int = 2,
        embedding_dim: int = 16,
    ):
        super().__init__()
        self.conditional = conditional
        self.chs = chs
        self.bottleneck_hw = (height // 16, width // 16)
        n_cells = self.bottleneck_hw[0] * self.bottleneck_hw[1]
        self.embed_condition = nn.Embedding(num_classes, embedding_dim)
        self.project_noise = nn.Linear(noise_dim, n_cells * chs[4])
        self.project_cond = nn.Linear(embedding_dim, n_cells)
        self.dconv_down1 = _double_conv(1, chs[0])
        self.dconv_down2 = _double_conv(chs[0], chs[1])
        self.dconv_down3 = _double_conv(chs[1], chs[2])
        self.dconv_down4 = _double_conv(chs[2], chs[3])
        self.dconv_down5 = _double_conv(chs[3], chs[4])
        bottleneck = 2 * chs[4] + (1 if conditional else 0)
        self.dconv_up5 = _double_conv(bottleneck + chs[3], chs[3])
        self.dconv_up4 = _double_conv(chs[3] + chs[2], chs[2])
        self.dconv_up3 = _double_conv(chs[2] + chs[1], chs[1])
        self.dconv_up2 = _double_conv(chs[1] + chs[0], chs[0])
        self.dconv_up1 = nn.Conv2d(chs[0], 1, kernel_size=1)

    def forward(
        self, x: torch.Tensor, z: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        b = x.shape[0]
        h, w = self.bottleneck_hw
        noise = self.project_noise(z).reshape(b, self.chs[4], h, w)
        d1 = self.dconv_down1(x)
        d2 = self.dconv_down2(F.max_pool2d(d1, 2, 2))
        d3 = self.dconv_down3(F.max_pool2d(d2, 2, 2))
        d4 = self.dconv_down4(F.max_pool2d(d3, 2, 2))
        d5 = self.dconv_down5(F.max_pool2d(d4, 2, 2))
        parts = [d5, noise]
        if self.conditional:
            if cond is None:
                raise ValueError("the conditional U-Net needs cond (B,)")
            c = self.project_cond(self.embed_condition(cond.long())).reshape(b, 1, h, w)
            parts.append(c)
        y = torch.cat(parts, dim=1)
        for skip, block in (
            (d4, self.dconv_up5),
            (d3, self.dconv_up4),
            (d2, self.dconv_up3),
            (d1, self.dconv_up2),
        ):
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            y = block(torch.cat((skip, y), dim=1))
        return torch.tanh(self.dconv_up1(y))


# --------------------------------------------------------------------------------------------
# 3. Modified AlexNet, 4. AudioNet
# --------------------------------------------------------------------------------------------


class AlexNet(nn.Module):
    """The original ``load_modified_AlexNet``: x (B, 1, 80, 32) -> logits (B, num_classes)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=5, stride=1, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _audio_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(kernel_size=2, stride=2),
    )


class AudioNet(nn.Module):
    """Raw-waveform classifier: audio (B, 1, 8192) -> (logits (B, K), features (B, 64, 128))."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = _audio_block(1, 100)
        self.conv2 = _audio_block(100, 64)
        self.conv3 = _audio_block(64, 128)
        self.conv4 = _audio_block(128, 128)
        self.conv5 = _audio_block(128, 128)
        self.conv6 = _audio_block(128, 64)
        self.fc1 = nn.Sequential(nn.Linear(8192, 1024), nn.Dropout(0.5))
        self.fc2 = nn.Sequential(nn.Linear(1024, 512), nn.Dropout(0.5))
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        out = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        features = self.conv6(out)
        out = self.fc3(self.fc2(self.fc1(features.reshape(-1, 8192))))
        return out, features


# --------------------------------------------------------------------------------------------
# 5. MelGAN vocoder
# --------------------------------------------------------------------------------------------


def _melgan_weights_init(m: nn.Module) -> None:
    """The original MelGAN ``weights_init``.

    It writes N(0, 0.02) into ``m.weight`` of every Conv; for weight-normed convs that
    attribute is recomputed from ``weight_g`` / ``weight_v`` before every forward, so (as in
    the original) it has no lasting effect there.
    """
    if "Conv" in type(m).__name__:
        m.weight.data.normal_(0.0, 0.02)
    elif "BatchNorm2d" in type(m).__name__:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


class ResnetBlock(nn.Module):
    """shortcut(x) + [LReLU, ReflPad d, WN-Conv k3 dil d, LReLU, WN-Conv k1](x).

    (B, C, T) -> (B, C, T).
    """

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.ReflectionPad1d(dilation),
            weight_norm(nn.Conv1d(dim, dim, kernel_size=3, dilation=dilation)),
            nn.LeakyReLU(0.2),
            weight_norm(nn.Conv1d(dim, dim, kernel_size=1)),
        )
        self.shortcut = weight_norm(nn.Conv1d(dim, dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class MelGANGenerator(nn.Module):
    """MelGAN generator: log-mel (B, 80, 32) -> audio (B, 1, 8192) (hop 256)."""

    def __init__(
        self,
        input_size: int = 80,
        ngf: int = 32,
        n_residual_layers: int = 3,
        ratios: tuple[int, ...] = (8, 8, 2, 2),
    ):
        super().__init__()
        self.hop_length = int(np.prod(ratios))
        mult = 2 ** len(ratios)
        layers: list[nn.Module] = [
            nn.ReflectionPad1d(3),
            weight_norm(nn.Conv1d(input_size, mult * ngf, kernel_size=7, padding=0)),
        ]
        for r in ratios:
            layers += [
                nn.LeakyReLU(0.2),
                weight_norm(
                    nn.ConvTranspose1d(
                        mult * ngf,
                        mult * ngf // 2,
                        kernel_size=2 * r,
                        stride=r,
                        padding=r // 2 + r % 2,
                        output_padding=r % 2,
                    )
                ),
            ]
            layers += [
                ResnetBlock(mult * ngf // 2, dilation=3**j) for j in range(n_residual_layers)
            ]
            mult //= 2
        layers += [
            nn.LeakyReLU(0.2),
            nn.ReflectionPad1d(3),
            weight_norm(nn.Conv1d(ngf, 1, kernel_size=7, padding=0)),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)
        self.apply(_melgan_weights_init)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model(mel)


class NLayerDiscriminator(nn.Module):
    """One MelGAN discriminator scale: audio (B, 1, T) -> list of 7 layer outputs (B, C, T')."""

    def __init__(self, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4):
        super().__init__()
        model = nn.ModuleDict()
        model["layer_0"] = nn.Sequential(
            nn.ReflectionPad1d(7),
            weight_norm(nn.Conv1d(1, ndf, kernel_size=15)),
            nn.LeakyReLU(0.2, True),
        )
        nf = ndf
        nf_prev = nf
        stride = downsampling_factor
        for n in range(1, n_layers + 1):
            nf_prev = nf
            nf = min(nf * stride, 1024)
            model[f"layer_{n}"] = nn.Sequential(
                weight_norm(
                    nn.Conv1d(
                        nf_prev,
                        nf,
                        kernel_size=stride * 10 + 1,
                        stride=stride,
                        padding=stride * 5,
                        groups=nf_prev // 4,
                    )
                ),
                nn.LeakyReLU(0.2, True),
            )
        # As in the original: the next layer takes the previous loop's in-channels (nf_prev).
        nf = min(nf * 2, 1024)
        model[f"layer_{n_layers + 1}"] = nn.Sequential(
            weight_norm(nn.Conv1d(nf_prev, nf, kernel_size=5, stride=1, padding=2)),
            nn.LeakyReLU(0.2, True),
        )
        model[f"layer_{n_layers + 2}"] = weight_norm(
            nn.Conv1d(nf, 1, kernel_size=3, stride=1, padding=1)
        )
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        results = []
        for layer in self.model.values():
            x = layer(x)
            results.append(x)
        return results


class MelGANDiscriminator(nn.Module):
    """Multi-scale MelGAN discriminator: audio (B, 1, T) -> [scale][layer] outputs (B, C, T')."""

    def __init__(
        self, num_D: int = 3, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4
    ):
        super().__init__()
        self.model = nn.ModuleDict()
        for i in range(num_D):
            self.model[f"disc_{i}"] = NLayerDiscriminator(ndf, n_layers, downsampling_factor)
        self.downsample = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)
        self.apply(_melgan_weights_init)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        results = []
        for disc in self.model.values():
            results.append(disc(x))
            x = self.downsample(x)
        return results


# --------------------------------------------------------------------------------------------
# Loading golden vectors
# --------------------------------------------------------------------------------------------


def load_parity_state_dict(npz: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``param/<key>`` entries of a parity file -> a state_dict (float -> float32, ints kept)."""
    out = {}
    for k, v in npz.items():
        if not k.startswith("param/"):
            continue
        arr = np.asarray(v)
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        out[k[len("param/") :]] = torch.from_numpy(np.array(arr))
    return out


# --------------------------------------------------------------------------------------------
# Benchmark helpers: default-initialised networks, forward, loss and an Adam train step
# --------------------------------------------------------------------------------------------


def build_network(name: str, seed: int = 0) -> nn.Module:
    """A network from ``NETWORKS`` with the original's default initialisation (float32)."""
    torch.manual_seed(seed)
    builders: dict[str, Callable[[], nn.Module]] = {
        "unet_filter": lambda: UNet(conditional=False),
        "unet_generator": lambda: UNet(conditional=True),
        "alexnet": lambda: AlexNet(2),
        "audionet": lambda: AudioNet(10),
        "melgan_generator": lambda: MelGANGenerator(),
        "melgan_discriminator": lambda: MelGANDiscriminator(num_D=3),
    }
    if name not in builders:
        raise KeyError(f"unknown network {name!r}; expected one of {NETWORKS}")
    return builders[name]()


def forward(name: str, model: nn.Module, inputs: dict[str, torch.Tensor]):
    """Runs ``model`` on the benchmark inputs of ``name`` (see ``bench_models.make_inputs``).

    Input keys: unet_*: x (B,1,80,32), z (B,10), cond (B,); alexnet: x; audionet: audio
    (B,1,8192); melgan_generator: mel (B,80,32); melgan_discriminator: audio (B,1,8192).
    """
    if name.startswith("unet"):
        return model(inputs["x"], inputs["z"], inputs["cond"] if model.conditional else None)
    if name == "alexnet":
        return model(inputs["x"])
    if name in ("audionet", "melgan_discriminator"):
        return model(inputs["audio"])
    if name == "melgan_generator":
        return model(inputs["mel"])
    raise KeyError(name)


def loss_fn(name: str, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scalar benchmark loss (the same on the JAX side).

    U-Nets and MelGAN generator: mean squared error to ``inputs['target']``; classifiers:
    cross-entropy to ``inputs['label']``; discriminator: sum over scales of
    ``mean(relu(1 - score))`` (the hinge loss on real audio).
    """
    out = forward(name, model, inputs)
    if name.startswith("unet") or name == "melgan_generator":
        return torch.mean((out - inputs["target"]) ** 2)
    if name == "alexnet":
        return F.cross_entropy(out, inputs["label"])
    if name == "audionet":
        return F.cross_entropy(out[0], inputs["label"])
    if name == "melgan_discriminator":
        return sum(torch.mean(torch.relu(1.0 - scale[-1])) for scale in out)
    raise KeyError(name)


def make_train_step(
    name: str, model: nn.Module, lr: float = 1e-4
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A train step closure: forward (training mode), loss, backward, Adam (betas 0.5, 0.9)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    model.train()

    def step(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(name, model, inputs)
        loss.backward()
        opt.step()
        return loss.detach()

    return step
