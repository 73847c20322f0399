"""An evaluation harness: SWE-bench style tasks built from real packages, attempted by agents,
graded in the sandbox.

`task` holds the data model (tasks, predictions, grades); `sources`, `packages`,
`environments`, `testrun`, `workspace` and `grade` get a package's code, run its tests and
grade a patch.
"""
