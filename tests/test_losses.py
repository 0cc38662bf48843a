"""The training losses against values worked out by hand."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcmelgan_jax.training import losses

LOG = math.log


def test_generator_discriminator_loss_by_hand():
    """Real x with the true gender, fake x2 as class 2, each cross-entropy weighted 0.5.

    Cross-entropy of logits (a, b, c) at class k: log(e^a + e^b + e^c) - logit_k.
    real [log 2, 0, 0], gender 0: log 4 - log 2 = log 2;  [0, log 3, 0], gender 1: log 5 - log 3
    fake [0, 0, log 2], class 2: log 4 - log 2 = log 2;   [0, 0, 0], class 2: log 3
    0.5 * ((log 2 + log 5 - log 3) / 2 + (log 2 + log 3) / 2) = (2 log 2 + log 5) / 4 = log(20) / 4
    """
    real = jnp.array([[LOG(2), 0.0, 0.0], [0.0, LOG(3), 0.0]])
    fake = jnp.array([[0.0, 0.0, LOG(2)], [0.0, 0.0, 0.0]])
    gender = jnp.array([0, 1])
    got = losses.generator_discriminator_loss(real, fake, gender)
    np.testing.assert_allclose(got, LOG(20) / 4, rtol=1e-6)
    # a wrong true gender costs more: real [log 2, 0, 0] at class 1 is log 4, not log 2
    wrong = losses.generator_discriminator_loss(real, fake, jnp.array([1, 1]))
    np.testing.assert_allclose(wrong - got, 0.25 * (LOG(4) - LOG(2)), rtol=1e-6)


def _scales():
    """Two discriminator scales, each [feature maps..., score map] for real and fake audio."""
    real = [
        [jnp.zeros(4), jnp.array([1.0, 2.0]), jnp.array([0.5, 2.0])],
        [jnp.array([0.0, 0.0]), jnp.array([-1.0])],
    ]
    fake = [
        [jnp.full(4, 0.5), jnp.array([1.0, 4.0]), jnp.array([-2.0, 0.0])],
        [jnp.array([3.0, -1.0]), jnp.array([1.0])],
    ]
    return real, fake


def test_discriminator_hinge_loss_by_hand():
    """Scale 1: real mean(relu(1 - [0.5, 2])) = 0.25, fake mean(relu(1 + [-2, 0])) = 0.5;
    scale 2: real relu(1 + 1) = 2, fake relu(1 + 1) = 2; total 4.75. Features are ignored."""
    real, fake = _scales()
    np.testing.assert_allclose(losses.discriminator_hinge_loss(real, fake), 4.75, rtol=1e-6)


def test_generator_hinge_loss_by_hand():
    """-mean([-2, 0]) - mean([1]) = 1 - 1 = 0; with the second score at -3 it is 1 + 3 = 4."""
    _, fake = _scales()
    np.testing.assert_allclose(losses.generator_hinge_loss(fake), 0.0, atol=1e-7)
    fake[1][-1] = jnp.array([-3.0])
    np.testing.assert_allclose(losses.generator_hinge_loss(fake), 4.0, rtol=1e-6)


def test_feature_matching_loss_by_hand():
    """Weight (1 / 2 scales) * (4 / (3 layers + 1)) = 0.5 on the summed L1 of every feature map
    but the scores: scale 1: |0.5 - 0| = 0.5 and mean(|[0, 2]|) = 1; scale 2: mean(|[3, -1]|) =
    2; 0.5 * 3.5 = 1.75. The real features get no gradient."""
    real, fake = _scales()
    np.testing.assert_allclose(losses.feature_matching_loss(real, fake, 3), 1.75, rtol=1e-6)
    grad = jax.grad(lambda r: losses.feature_matching_loss(r, fake, 3))(real)
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree.leaves(grad))


def test_distortion_hinge_by_hand():
    """lamb * relu(L1 - eps)^2: 100 * (0.3 - 0.1)^2 = 4; zero once eps >= L1."""
    x = jnp.zeros((2, 80, 32, 1))
    y = jnp.full((2, 80, 32, 1), 0.3)
    penalty, distortion = losses.distortion_penalty(y, x, eps=0.1, lamb=100.0)
    np.testing.assert_allclose(distortion, 0.3, rtol=1e-6)
    np.testing.assert_allclose(penalty, 4.0, rtol=1e-5)
    penalty, _ = losses.distortion_penalty(y, x, eps=0.5, lamb=100.0)
    assert float(penalty) == 0.0
    np.testing.assert_allclose(losses.distortion_hinge(jnp.float32(0.25), 0.05, 10.0), 0.4,
                               rtol=1e-6)


def test_filter_adversarial_loss_by_hand():
    """Flipped labels: logits [log 3, 0] of a female (0) scored as male (1): log 4 - 0 = log 4.
    Entropy: uniform over 2 classes has entropy log 2, so the loss is -log 2."""
    logits = jnp.array([[LOG(3), 0.0]])
    np.testing.assert_allclose(
        losses.filter_adversarial_loss(logits, jnp.array([0]), entropy=False), LOG(4), rtol=1e-6)
    np.testing.assert_allclose(
        losses.filter_adversarial_loss(jnp.zeros((3, 2)), jnp.array([0, 1, 0]), entropy=True),
        -LOG(2), rtol=1e-6)


def test_entropy_loss_maximises_fd_entropy():
    gender = jnp.array([0, 1, 0, 1])
    confident = jnp.array([[5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, 5.0]])
    uniform = jnp.zeros((4, 2))
    loss_confident = losses.filter_adversarial_loss(confident, gender, entropy=True)
    loss_uniform = losses.filter_adversarial_loss(uniform, gender, entropy=True)
    assert loss_uniform < loss_confident  # F's loss decreases as FD goes to uniform
    # the gradient step on the logits moves FD towards uniform (entropy up)
    g = jax.grad(lambda lg: losses.filter_adversarial_loss(lg, gender, True))(confident * 0.1)
    moved = confident * 0.1 - 10.0 * g
    assert losses.mean_entropy(moved) > losses.mean_entropy(confident * 0.1)


def test_label_smoothing_by_hand():
    """Logits [log 3, 0], label 0, smoothing 0.2: the target is [0.9, 0.1] and
    log-softmax [log 3/4, log 1/4], so the loss is -(0.9 log 3/4 + 0.1 log 1/4)."""
    logits, labels = jnp.array([[LOG(3), 0.0]]), jnp.array([0])
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), LOG(4 / 3),
                               rtol=1e-6)
    want = -(0.9 * LOG(3 / 4) + 0.1 * LOG(1 / 4))
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, 0.2), want, rtol=1e-6)


def test_label_smoothing_is_optax_smoothed_cross_entropy():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3 * rng.standard_normal((6, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 6))
    for a in (0.0, 0.1, 0.3):
        want = optax.softmax_cross_entropy(
            logits, optax.smooth_labels(jax.nn.one_hot(labels, 10), a)).mean()
        np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, a), want,
                                   rtol=1e-6)


def test_accuracy_by_hand():
    logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = jnp.array([0, 0, 0])
    np.testing.assert_allclose(losses.accuracy(logits, labels), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(losses.accuracy(logits, labels, jnp.array([1.0, 1.0, 0.0])), 0.5)


def test_label_mean_gap_by_hand():
    """Label 1 rows [1, 3], [3, 5]: means [2, 4], unbiased variances [2, 2]; label 0 rows
    [2, 0], [4, 2]: means [3, 1], variances [2, 2]; 2 rows each. Per element
    gap^2 - v1/2 - v0/2 = [1 - 2, 9 - 2] = [-1, 7]: mean 3."""
    x = jnp.array([[1.0, 3.0], [2.0, 0.0], [3.0, 5.0], [4.0, 2.0]])[:, :, None]  # (B, 2, 1)
    labels = jnp.array([1, 0, 1, 0])
    np.testing.assert_allclose(losses.label_mean_gap(x, labels), 3.0, rtol=1e-5)
    # unbiased: over many batches drawn with equal class means it averages to 0, while the
    # plain squared gap of batch means would average to the sampling noise
    rng = np.random.default_rng(0)
    draws = jnp.asarray(rng.standard_normal((4000, 8, 5)), jnp.float32)
    split = jnp.array([0, 1] * 4)
    estimates = jax.vmap(lambda b: losses.label_mean_gap(b, split))(draws)
    assert abs(float(jnp.mean(estimates))) < 0.01  # noise alone: 2 * 1/4 = 0.5 per element
    shifted = draws + 0.5 * split[None, :, None]  # true gap 0.5 in every element: 0.25
    np.testing.assert_allclose(
        float(jnp.mean(jax.vmap(lambda b: losses.label_mean_gap(b, split))(shifted))), 0.25,
        atol=0.02)
    # fewer than 2 rows of a label: 0, with a finite (zero) gradient
    one = jnp.array([0, 0, 0, 1])
    assert float(losses.label_mean_gap(x, one)) == 0.0
    grad = jax.grad(lambda v: losses.label_mean_gap(v, one))(x)
    assert np.all(np.isfinite(grad)) and not np.any(grad)
    # the gradient closes the gap
    g = jax.grad(lambda v: losses.label_mean_gap(v, labels))(x)
    assert float(losses.label_mean_gap(x - 0.05 * g, labels)) < 3.0


def _numpy_stft_loss(fake, real, resolutions, power_floor=1e-7):
    """The multi-resolution STFT loss in float64 NumPy, framed as ``audio.stft_magnitude``:
    reflect pad (n_fft - hop) / 2, periodic Hann of ``win`` centred in the n_fft frame."""
    def magnitude(y, n_fft, hop, win):
        pad = (n_fft - hop) // 2
        y = np.pad(y, [(0, 0), (pad, pad)], mode="reflect")
        n = np.arange(win)
        window = np.zeros(n_fft)
        left = (n_fft - win) // 2
        window[left:left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win)
        starts = range(0, y.shape[-1] - n_fft + 1, hop)
        frames = np.stack([y[:, t:t + n_fft] for t in starts], axis=1) * window
        return np.sqrt(np.maximum(np.abs(np.fft.rfft(frames, axis=-1)) ** 2, power_floor))

    sc, mag = [], []
    for n_fft, hop, win in resolutions:
        mf, mr = (magnitude(np.asarray(y, np.float64), n_fft, hop, win) for y in (fake, real))
        sc.append(np.mean(np.linalg.norm(mr - mf, axis=(1, 2)) / np.linalg.norm(mr, axis=(1, 2))))
        mag.append(np.mean(np.abs(np.log(mr) - np.log(mf))))
    return np.mean(sc) + np.mean(mag), np.mean(sc), np.mean(mag)


def test_multi_resolution_stft_loss_by_hand():
    """Identical audio: both terms 0. fake = 2 real: every magnitude doubles, so the spectral
    convergence is ||M - 2M|| / ||M|| = 1 and the log magnitude |log M - log 2M| = log 2 (bins
    under the floor aside: none for this noise) at every resolution. Otherwise the NumPy loss,
    with one window shorter than its n_fft."""
    resolutions = ((64, 16, 64), (128, 32, 96))
    real = jax.random.normal(jax.random.key(0), (2, 1024))
    fake = jax.random.normal(jax.random.key(1), (2, 1024))
    loss = jax.jit(losses.multi_resolution_stft_loss, static_argnums=2)

    np.testing.assert_allclose(loss(real, real, resolutions), (0.0, 0.0, 0.0), atol=1e-6)
    total, sc, mag = loss(2.0 * real, real, resolutions)
    np.testing.assert_allclose((sc, mag, total), (1.0, LOG(2), 1.0 + LOG(2)), rtol=1e-5)
    for r in resolutions:  # each resolution alone, so none hides behind the mean
        np.testing.assert_allclose(loss(2.0 * real, real, (r,))[1:], (1.0, LOG(2)), rtol=1e-5)
    np.testing.assert_allclose(
        loss(fake, real, resolutions), _numpy_stft_loss(fake, real, resolutions), rtol=1e-4
    )


def test_multi_resolution_stft_loss_is_finite_on_silence():
    """All-zero audio on either side (and both): finite loss and finite gradients w.r.t. fake."""
    noise = 0.1 * jax.random.normal(jax.random.key(0), (2, 1024))
    silence = jnp.zeros((2, 1024))
    grad = jax.jit(jax.value_and_grad(lambda f, r: losses.multi_resolution_stft_loss(f, r)[0]))
    for fake, real in ((silence, silence), (noise, silence), (silence, noise)):
        value, g = grad(fake, real)
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(grad(silence, silence)[0], 0.0, atol=1e-6)
    assert float(grad(noise, silence)[0]) > 0 and np.any(np.asarray(grad(noise, silence)[1]))
