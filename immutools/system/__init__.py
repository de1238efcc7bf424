"""The shared layer the distribution collectors stand on: what a running system would have,
reconstructed offline from an image.

Modules (import the one you need; nothing heavy is imported here):

* ``cmdline``   kernel command line (``KernelCmdline``) with the systemd/kernel parsing rules and
                helpers for the keys collectors read (root=, mount.usr=, verity, dm-mod.create, LSMs)
* ``grubcfg``   GRUB configuration reading: ``set`` variables, menu entries and their ``linux`` lines
* ``sdboot``    systemd-boot ``loader.conf`` and ``loader/entries/*.conf`` (Boot Loader Specification)
* ``devices``   ``LABEL=``/``UUID=``/``PARTLABEL=``/``PARTUUID=`` sources and ``/dev/disk/by-*`` names
* ``fstab``     fstab parsing
* ``units``     systemd unit files: lookup, drop-ins, masking, enablement, .mount/.socket/.service
* ``mounts``    the mount-table model and the read-only / volatile / persistent resolution rules
* ``rootview``  ``OsTree``: several filesystems composed at mount points into one namespace
* ``surface``   the attack-surface inventory of an ``OsTree``
"""
