# Shared by the dom0 and the guest init (busybox sh): the known writes the
# guest makes and dom0 replays on a copy of the image to know what the image
# must hold afterwards.

# The writes, in 512-byte sectors: "seek count skip", skip being the offset
# into /e2e/pattern.bin. "LAST" is the disk's last sector. They cover the
# first page, a lone odd sector, a 64 KiB run that starts mid-page (spans
# 17 pages, so blkfront splits it across segments), and the last sector.
e2e_writes() {
  echo "0 8 0"
  echo "2049 1 8"
  echo "20483 128 16"
  echo "LAST 1 144"
}

# apply_writes TARGET SIZE_SECTORS [DD_CONV]: replays the writes on TARGET.
apply_writes() {
  _t=$1 _size=$2 _conv=${3:-notrunc}
  e2e_writes | while read -r _seek _count _skip; do
    [ "$_seek" = LAST ] && _seek=$((_size - 1))
    dd if=/e2e/pattern.bin of="$_t" bs=512 seek="$_seek" skip="$_skip" count="$_count" conv="$_conv" 2>/dev/null ||
      return 1
  done
}

# check_writes TARGET SIZE_SECTORS: reads each written range back from
# TARGET and compares it with the pattern. Prints nothing; status 0 if all match.
check_writes() {
  _t=$1 _size=$2
  e2e_writes | {
    _ok=0
    while read -r _seek _count _skip; do
      [ "$_seek" = LAST ] && _seek=$((_size - 1))
      _got=$(dd if="$_t" bs=512 skip="$_seek" count="$_count" 2>/dev/null | md5sum | cut -d' ' -f1)
      _want=$(dd if=/e2e/pattern.bin bs=512 skip="$_skip" count="$_count" 2>/dev/null | md5sum | cut -d' ' -f1)
      [ "$_got" = "$_want" ] || _ok=1
    done
    return $_ok
  }
}

# Seconds since boot, with hundredths.
now() { cut -d' ' -f1 /proc/uptime; }
# since T0: seconds elapsed since T0 (as printed by now).
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# deadline SECONDS: the uptime at which SECONDS from now have passed;
# past DEADLINE: whether it has. (Loop counts would stretch under TCG.)
deadline() { awk -v n="$(now)" -v s="$1" 'BEGIN { printf "%d", n + s }'; }
past() { awk -v n="$(now)" -v d="$1" 'BEGIN { exit !(n >= d) }'; }
