#!/bin/sh
# Regenerates debian-12-grub-mkconfig.cfg: Debian 12's own grub-mkconfig and /etc/grub.d scripts
# (package grub-common 2.06-13+deb12u2; sources: Debian's grub2 package, util/grub-mkconfig.in and
# util/grub.d/*.in at https://salsa.debian.org/grub-team/grub tag debian/2.06-13+deb12u2), run
# against a stand-in /boot with two kernels and stand-ins for grub-probe and grub-mkrelpath that
# answer for a GPT disk /dev/vda whose partition 1 is an ext4 root holding /boot.
# Needs root (a private mount namespace puts the stand-in /boot over /boot) and grub-common.
# Usage: make-debian-grub-mkconfig.sh OUTPUT
set -eu
out=$(realpath -m "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/boot/grub"
for v in 6.1.0-57-cloud-amd64 6.1.0-18-cloud-amd64; do
  for f in vmlinuz initrd.img config System.map; do : > "$work/boot/$f-$v"; done
done
cat > "$work/bin/grub-probe" <<'PROBE'
#!/bin/sh
target=""
while [ $# -gt 0 ]; do
  case "$1" in --target=*) target="${1#--target=}";; -t) shift; target="$1";; esac
  shift
done
case "$target" in
  device) echo /dev/vda1;;
  fs) echo ext2;;
  fs_uuid) echo 7c2e9a4b-1d3f-4a5b-8c6d-7e8f9a0b1c2d;;
  partuuid) echo 3b4c5d6e-01;;
  partmap) echo gpt;;
  drive) echo "(hd0)";;
  compatibility_hint|bios_hints|efi_hints) echo "hd0,gpt1";;
  baremetal_hints) echo "ahci0,gpt1";;
  hints_string) echo "--hint-bios=hd0,gpt1 --hint-efi=hd0,gpt1 --hint-baremetal=ahci0,gpt1";;
  *) echo;;
esac
PROBE
printf '#!/bin/sh\necho "$1"\n' > "$work/bin/grub-mkrelpath"
sed -e "s|^grub_probe=.*|grub_probe=$work/bin/grub-probe|" /usr/sbin/grub-mkconfig > "$work/bin/grub-mkconfig"
chmod +x "$work/bin/"*
unshare -m sh -c "mount --bind '$work/boot' /boot && \
  grub_probe='$work/bin/grub-probe' grub_mkrelpath='$work/bin/grub-mkrelpath' \
  GRUB_DISTRIBUTOR=Debian GRUB_TIMEOUT=5 GRUB_CMDLINE_LINUX_DEFAULT=quiet \
  GRUB_CMDLINE_LINUX='console=tty0 console=ttyS0,115200' GRUB_DISABLE_OS_PROBER=true \
  sh '$work/bin/grub-mkconfig' -o '$work/grub.cfg'"
{
  echo "# Test data for immutools (tests/test_grub_templates.py): Debian 12 grub-mkconfig output with the"
  echo "# 'Advanced options' submenu, made by make-debian-grub-mkconfig.sh (see there for how)."
  cat "$work/grub.cfg"
} > "$out"
