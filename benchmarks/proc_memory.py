"""Resident memory of this process, from /proc (Linux), shared by the benchmarks."""


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_mb():
    """Current resident memory (VmRSS) in MB."""
    return _status_mb("VmRSS")


def hwm_mb():
    """Peak resident memory (VmHWM) in MB."""
    return _status_mb("VmHWM")


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
