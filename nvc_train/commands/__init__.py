"""The plain ``nvc-train`` subcommands (everything but fit/validate/test), one module per family.

Each module defines ``add_parsers(sub)``, which adds its subcommands and sets ``run`` to the
function that carries one out. Imports go one way: ``nvc_train.cli`` → these modules → the
library; modules here import torch and the models only inside the functions that need them,
so an argument error or ``info`` answers without loading them.

============== ===========================================================
module          subcommands
============== ===========================================================
export          export-float, export-integer (export), ptq
portable        export-onnx
codec           encode, decode, info, hashes (verify), compare
data            prepare-footage
evaluation      eval, bdrate
conformance     conformance
crosscheck      cross-check
hub             publish
demo            demo
reproduce       reproduce
============== ===========================================================
"""

from nvc_train.commands import (
    codec,
    conformance,
    crosscheck,
    data,
    demo,
    evaluation,
    export,
    hub,
    portable,
    reproduce,
)

FAMILIES = (export, portable, conformance, crosscheck, codec, data, evaluation, hub, demo, reproduce)
