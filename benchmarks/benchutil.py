"""Helpers shared by the benchmarks: resident memory of this process from /proc (Linux), the
CPU's name, and a median that skips missing values."""
import platform
import statistics


def median(vals):
    """Median of the values that are not None (None if there are none)."""
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def cpu_name():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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
