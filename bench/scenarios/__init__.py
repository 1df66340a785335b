"""One module per scenario of issue #8; each exposes ``KEY``, ``TITLE`` and ``async run(ctx)``."""
