"""Multi-resolution spectral loss (DDSP, Engel et al. 2020, sec. 4.2.1).

For each FFT size ``n`` the magnitude STFTs ``S`` (target) and ``Ŝ`` (prediction), Hann window,
hop ``n / 4``, are compared as ``mean|S - Ŝ| + log_weight * mean|log(S + eps) - log(Ŝ + eps)|``;
the loss is the mean over sizes. The linear term weighs loud partials, the log term quiet ones.
"""

from __future__ import annotations

import tensorflow as tf

FFT_SIZES = (1024, 512, 256, 128, 64)


def spectral_loss(target: tf.Tensor, prediction: tf.Tensor, fft_sizes=FFT_SIZES,
                  log_weight: float = 1.0, eps: float = 1e-5) -> tf.Tensor:
    """Scalar loss between audio batches ``(B, S)`` float32 (``S >= max(fft_sizes)``).

    Magnitudes are divided by ``n / 2`` so a full-scale sine peaks near 1 at every size.
    Raises ``ValueError`` on mismatched shapes.
    """
    if target.shape != prediction.shape:
        raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ")
    total = 0.0
    for n in fft_sizes:
        def mag(x, n=n):
            return tf.abs(tf.signal.stft(x, n, n // 4, n, window_fn=tf.signal.hann_window,
                                         pad_end=True)) / (n / 2)
        s, p = mag(target), mag(prediction)
        total += tf.reduce_mean(tf.abs(s - p))
        total += log_weight * tf.reduce_mean(tf.abs(tf.math.log(s + eps) - tf.math.log(p + eps)))
    return total / len(fft_sizes)


def loudness_loss(target: tf.Tensor, prediction: tf.Tensor, frame: int,
                  floor_db: float = -80.0) -> tf.Tensor:
    """Mean absolute difference (dB) of the frame energies of audio batches ``(B, S)``.

    Frames of ``frame`` samples (the tail that does not fill a frame is ignored); the mean
    square of each frame in dB, floored at ``floor_db`` so silence does not dominate.
    """
    if target.shape != prediction.shape:
        raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ")

    def energy_db(x):
        n = (x.shape[-1] // frame) * frame
        x = tf.reshape(x[..., :n], (-1, n // frame, frame))
        db = 10.0 * tf.math.log(tf.reduce_mean(tf.square(x), axis=-1) + 1e-12) / 2.302585093
        return tf.maximum(db, floor_db)

    return tf.reduce_mean(tf.abs(energy_db(target) - energy_db(prediction)))
