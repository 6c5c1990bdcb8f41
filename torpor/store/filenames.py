"""Every file name torpor uses, in one place (like Lima's ``filenames`` package).

Socket names are short on purpose: a unix socket path must fit in 108 bytes.
"""

# Directly under $TORPOR_HOME
CONFIG_DIR = "_config"  # default.yaml, override.yaml, the SSH key pair
DEFAULT_YAML = "default.yaml"
OVERRIDE_YAML = "override.yaml"
SSH_KEY = "user"  # torpor's SSH key pair in CONFIG_DIR: user and user.pub, mode 0600

# In an instance directory
INSTANCE_YAML = "torpor.yaml"  # the user's instance file, as given to `create` and edited since
DISK = "disk.qcow2"  # the guest's persistent disk (qcow2, possibly over BASE_DISK)
BASE_DISK = "basedisk"  # the image the disk was created from, when the image is a disk image
KERNEL = "kernel"  # copies of the boot files, so an instance never depends on the cache after creation
INITRD = "initrd"
LOCK = "instance.lock"  # held by CLI commands that change the instance (start, stop, delete)
HA_PID = "ha.pid"  # the host agent's pid; the agent holds an exclusive flock on it while alive
HA_SOCK = "ha.sock"  # the host agent's HTTP API
HA_STDOUT = "ha.stdout.log"  # the host agent's events, JSON lines
HA_STDERR = "ha.stderr.log"  # the host agent's log
QEMU_PID = "qemu.pid"
QMP_SOCK = "qmp.sock"
READY_SOCK = "ready.sock"  # virtio-serial channel on which the default guest reports that it is up
QGA_SOCK = "qga.sock"  # the QEMU guest agent's virtio-serial channel
MOUNT_SOCK_GLOB = "mount*.sock"  # mount N's virtio-serial channel (mount_sock) or virtiofsd's (virtiofs_sock)
MIGRATION_SOCK = "mig.sock"  # the multifd mechanism's channels between QEMU and the host agent's relay
INSTANCE_ID = "instance-id"  # the guest's cloud-init instance-id, made once, never changed
CIDATA = "cidata.iso"  # the NoCloud seed for the current boot
EFI_VARS = "efi-vars.fd"  # a UEFI guest's variables (its NVRAM), made from the firmware's template at its first boot
SSH_CONFIG = "ssh.config"  # `ssh -F ssh.config torpor-NAME` reaches the guest
SSH_CONTROL = "ssh.sock"  # the SSH control master that shells, copies and port forwards share
PROVISION_LOG = "provision.log"  # the guest's provisioning output, copied out after each boot
BOOT_RECORD = "boot.json"  # how the running VM was booted (QEMU argv, config, SSH port): a restore reuses it
SAVED_DIR = "saved"  # a saved machine state: STATE_FILE + MANIFEST, complete only once MANIFEST is in place
STATE_FILE = "state.bin"
MEMORY_FILE = "memory.ram"  # guest RAM, in saveMode: instant (a pair with the saved state: never edit one alone)
MANIFEST = "manifest.json"
SAVED_ASIDE_PREFIX = "saved.failed-"  # a state that could not be restored, kept for diagnosis (`prune` removes)
PROTECTED = "protected"  # present: `delete` refuses (`torpor protect`)
REJECTED_YAML = "torpor.yaml.rejected"  # an `edit` that did not validate, kept for another try
SERIAL_LOG = "serial.log"  # the guest's serial console
SNAPSHOTS_DIR = "snapshots"  # snapshots/TAG/: SNAPSHOT_META, and with memory STATE_FILE and a copy of CIDATA
SNAPSHOT_META = "snapshot.json"  # written last: a snapshot directory without it is incomplete

# In the cache ($TORPOR_CACHE)
ACCEL_PROBE = "accel-probe.json"
QEMU_VERSIONS = "qemu-versions.json"

# Files that belong to one run of the host agent and must be cleared before the next.
RUNTIME_FILES = (HA_PID, HA_SOCK, QEMU_PID, QMP_SOCK, READY_SOCK, QGA_SOCK, SSH_CONTROL, MIGRATION_SOCK)


def mount_sock(index: int) -> str:
    return f"mount{index}.sock"


def virtiofs_sock(index: int) -> str:
    """Where virtiofsd serves mount N (mountType virtiofs) to QEMU; what it prints goes to virtiofs_log(N)."""
    return f"mount{index}.virtiofs.sock"


def virtiofs_log(index: int) -> str:
    return f"mount{index}.virtiofsd.log"
