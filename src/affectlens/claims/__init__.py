"""Output ownership: claims and atomic run directories (``runs.RunDir`` builds on them).

Every command writes one directory. Its path is *claimed* first (a lock file
``.NAME.claim`` beside it, held with ``flock`` for the life of the run), so two
runs never write the same output. The result is built under a temporary
sibling ``.NAME.tmp-RUN...`` and renamed into place only when complete, so a
failure never leaves a partial result, and an existing result is never
replaced without ``force``. A ``--force`` replace first moves the old result
aside to ``.NAME.old-RUN``; a kill between the two renames leaves that copy,
and the next run in the folder puts it back.

Only what affectlens made is ever cleaned up. A name proves nothing (a user's
``.thesis.old-2023/`` or ``.vimrc.claim`` looks like ours), so ownership is
proved by content, written before anything that relies on it:

- each process has a random *run id* (16 hex digits, :func:`run_id`);
- a claim file is ours only if it starts with the line ``affectlens-claim 1``;
  below it, one line per run that held it (``run ID pid N host H at T``). It
  appears with that content already in it (written to an unnamed file that is
  then linked into place, where the OS allows; else created and written at
  once, and a claim still empty is waited for, never taken);
- every temporary or old copy a run makes beside or inside its output carries
  the run id in its name (``.NAME.tmp-ID...``, ``.NAME.old-ID``,
  ``.FILE.tmp-ID...`` for files written atomically; a Ray/Slurm worker writing
  into a claimed output uses the id of the run holding the claim), and is
  made only while the claim file naming that id exists;
- a leftover is ours if and only if an affectlens claim file for its output
  names its run id. A run taking over a killed run's claim appends its own
  line and keeps the old ones, so the dead run's leftovers stay recognised
  until they are cleaned; a claim file is removed only once nothing it names
  is left (a run that ends with a worker's half-written file inside its
  output leaves its claim, unlocked, for the next run to sweep).

So a kill at any point leaves either nothing or leftovers that a claim file
vouches for; the next run that claims an output in the same folder (or that
output itself) puts an old copy back, removes temporaries and half-written
files, and releases the stale claim, unless a live run still holds it. A claim
file that is not ours (or a symlink, a FIFO) is only ever read, never locked,
written, renamed or deleted: a run on that output is refused with one line.
"""

from .atomic import atomic_dir, claim_output, holds_claim, temp_file
from .ids import check_out_dir, note, run_id
from .lock import claim_file, owners
from .sweep import sweep

__all__ = ["atomic_dir", "check_out_dir", "claim_file", "claim_output", "holds_claim", "note", "owners", "run_id",
           "sweep", "temp_file"]
