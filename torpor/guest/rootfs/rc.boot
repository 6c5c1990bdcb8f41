#!/bin/sh
# torpor default guest, stage 2: bring the system up from torpor's cidata, run provisioning, then tell the host
# agent the guest is ready.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/torpor /var/log/torpor /var/lib/torpor

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    udhcpc -b -q -S -i eth0 -s /lib/torpor/udhcpc.script >/dev/null 2>&1
fi
# ACPI power button -> /etc/acpi/PWRF/00000080 -> poweroff: how the host agent asks for a clean shutdown.
mkdir -p /etc/acpi/PWRF
cp /lib/torpor/power-button /etc/acpi/PWRF/00000080
acpid -c /etc/acpi

# A boot counter on the persistent disk: visible to the host in the ready report, it shows that what the
# guest writes to its disk survives a stop and start.
boots=$(( $(cat /var/lib/torpor/boots 2>/dev/null || echo 0) + 1 ))
echo "$boots" > /var/lib/torpor/boots

provision=none
if /lib/torpor/cidata; then
    /lib/torpor/setup
    /lib/torpor/mounts
    provision=$(/lib/torpor/provision)
fi
sync

for port in /sys/class/virtio-ports/*; do
    if [ "$(cat "$port/name" 2>/dev/null)" = io.torpor.ready ]; then
        (echo "ready uptime=$(cut -d' ' -f1 /proc/uptime) boots=$boots provision=$provision" > "/dev/${port##*/}") &
    fi
done
