"""The harness's stand-in for CloudStack's Java agent and patch script, run inside a booted system VM.

Not part of the image: :mod:`systemvm.boot.payload` packs ``agent.py`` and ``_run.sh`` into agent.zip and
ships ``patch-sysvms.sh`` beside it, as the management server delivers its own.
"""
