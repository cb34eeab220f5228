"""Training: data, optimisers, schedules, augmentation and the resumable loop around a trainer.

Data, in the order a run uses it: catalog (the table of every source --data names, with its reader)
picks readers (files), text (a text file as next-character windows) or builtin (generated sets;
sequences for the token tasks), which give a dataset (Split, Data); fit shapes it
to the spec and holds out validation; sources ties these to the --data flags and applies
dlc.normalize. The run: config (settings), order (each epoch's samples), streams
(the seeded random streams), trainer (the arithmetic: NumpyTrainer), optim and schedules (its update
rules), scoring, rundir (checkpoints, log, metrics), signals, and loop (the epochs).
"""
