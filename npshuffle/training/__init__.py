"""Training tools, apart from the inference runtime: ``npshuffle train`` and ``npshuffle eval``.

=====================  ===========================================================================
``datasets``           class-per-folder data sets and the seed project's train/validation split
``evaluate``           ``npshuffle eval``: accuracy and confusion matrix of a model file (no torch)
``torch_ref``          the PyTorch ShuffleNets: the oracle of the parity tests, the trainer's models
``train``              ``npshuffle train``: the entry point and the run from start to model file
``arguments``          its command-line options, architecture names and resolved configuration
``checkpoints``        .pth checkpoints: loading, architecture inference, --init, --resume state
``pipeline``           the torch data pipeline: crops, flips, per-dialect normalisation
``loop``               building the networks, the epochs, validation, distillation, metrics
=====================  ===========================================================================

Only this package imports torch (``torch_ref`` and the ``train`` modules; ``datasets`` and
``evaluate`` do not), and nothing of the runtime imports this package: the ``npshuffle`` command
loads it inside its ``train`` and ``eval`` commands only (see ``tests/test_import_rules.py``).
"""
