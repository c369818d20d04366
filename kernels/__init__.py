"""Pure math shared by the laptop and the box: analysis features, harmonic and noise
synthesis, band-limited wavetables, grid weights, envelopes, the limiter, dB quantisation.

numpy only (compiled kernels allowed); no I/O, no threads, no globals. Imports nothing else
of morphbox.
"""
