"""The network lab: the world a booted System VM is tested in (namespaces, bridges and taps, the services on
them, and what CloudStack's management server would configure the VM with)."""
