# Lambda's sandbox, as far as a mount namespace can make it (run under `unshare --mount`, as
# root): a fresh root of its own, read-only, holding the host's /usr and /etc read-only (qemu and
# the aarch64 C library live in /usr), the unpacked zip read-only at /var/task, a fresh writable
# /tmp, /dev's character devices, /proc with an aarch64 cpuinfo, and /sys read-only without
# /sys/devices/system/cpu (Lambda's arm64 sandbox has no CPU lists there).
#
# sh lambda_sandbox.sh ROOT TASK CPUINFO HIDE_CPU_LISTS COMMAND...
set -eu
root=$1 task=$2 cpuinfo=$3 hide_cpu_lists=$4
shift 4
ro_bind() { mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"; }
mount -t tmpfs -o size=1m,mode=0755 lambda-root "$root"
mkdir -p "$root/usr" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/var/task"
for dir in bin lib lib64 sbin; do ln -s "usr/$dir" "$root/$dir"; done
ro_bind /usr "$root/usr"
ro_bind /etc "$root/etc"
ro_bind "$task" "$root/var/task"
mount --bind /proc "$root/proc"
mount --bind "$cpuinfo" "$root/proc/cpuinfo"
ro_bind /sys "$root/sys"
if [ "$hide_cpu_lists" = 1 ]; then
    mount -t tmpfs -o ro,size=4k,mode=0755 no-cpu-lists "$root/sys/devices/system/cpu"
fi
for dev in null zero random urandom; do
    : > "$root/dev/$dev"
    mount --bind "/dev/$dev" "$root/dev/$dev"
done
# Lambda's default ephemeral storage.
mount -t tmpfs -o size=512m,mode=1777 lambda-tmp "$root/tmp"
mount -o remount,ro "$root"
cd "$root"
exec /usr/sbin/chroot "$root" "$@"
