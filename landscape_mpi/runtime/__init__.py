"""The life of the processes: ranks and devices, stop signals, agree-or-fail steps, aborts, scheduling, progress."""
