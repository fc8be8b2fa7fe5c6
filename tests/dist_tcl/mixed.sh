#!/bin/sh
# One torchrun job, two languages: rank 0 runs mixed.tcl in tclsh, the other
# ranks run mixed.py in $PYTHON (torch.distributed + tcltorch.Adafactor).
here=$(dirname "$0")
if [ "$RANK" = 0 ]; then
    exec tclsh "$here/mixed.tcl" "$@"
fi
exec "$PYTHON" "$here/mixed.py" "$@"
