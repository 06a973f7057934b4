"""One driver per hypervisor, behind the interface in :mod:`hypervisors.base`."""
