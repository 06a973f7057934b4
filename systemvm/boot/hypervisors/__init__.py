"""One driver per hypervisor, behind the interface in :mod:`systemvm.boot.hypervisors.base`."""
