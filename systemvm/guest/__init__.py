"""What runs INSIDE the system VM: the boot configuration, its channels and firewall, the patch step.

The element ``systemvm-guest`` copies this package (without ``testagent/``), ``systemvm/__init__.py`` and
``systemvm/contract.py`` to ``/opt/cloud/lib/systemvm/`` in the image, where the programs in
``/opt/cloud/bin`` import it as ``systemvm.guest``: one import path in the image and in the repository.
It runs on the image's Debian python3 (3.11) and imports nothing but the standard library and
:mod:`systemvm.contract` (``tests/unit/test_guest_layout.py`` checks both).

``testagent/`` is not installed in the image: it is the harness's stand-in for CloudStack's agent, which
arrives in the patch (:mod:`systemvm.boot.payload` packs it).
"""
