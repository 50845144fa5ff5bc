"""The workbench: runs as data — run store, launcher, live events and figures shared by the app
and the notebooks. It drives the ``taps`` trainer in worker processes and never trains in the
caller's process."""
