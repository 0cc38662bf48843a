"""Data: AudioMNIST TFDS builder, synthetic eSpeak NG corpus, Grain input pipeline.

Modules (import them directly; this package imports nothing heavy):

* ``corpus``: scanning an AudioMNIST-layout folder, metadata normalisation, the speaker split.
* ``audio_mnist``: the TFDS builder ``audio_mnist`` (configs ``all`` / ``paper``).
* ``prepare``: ``prepare(manual_dir, data_dir, config) -> report`` and ``pcmelgan-jax prepare``.
* ``synth``: ``synthesize_corpus(out_dir, speakers, reps, seed)`` and ``pcmelgan-jax synth-data``.
* ``pipeline``: ``make_dataset(data_dir, dataset, split, batch_size, seed, train, ...)``.
"""
