"""What every job shares, built once at start-up: the model registries (``models``), the
warm-up (``warmup``), the cross-job Whisper batcher (``batching``), fair turns on the GPU
(``fair_turns``), precision choices (``precision``) and the GPU stack check (``gpu_check``).

Imports the stages and the bottom layer, never ``predict``, the job runner or a door.
"""
