"""How fast kdjax trains, beside the original's PyTorch, and where the time goes.

    python -m kdjax.tools.benchmark [--json]                  kdjax's steps and evaluation, random uint8 batches
    python -m kdjax.tools.benchmark --compare-torch [--json]  kdjax against PyTorch NCHW and channels_last, and against
                                                        kdjax's path before the speed work, alternated in one run
    python -m kdjax.tools.benchmark --profile [--json]        the teacher-CE step, op by op (--profile_kind=student_ce:
                                                        the student's)
    python -m kdjax.tools.benchmark --data_parallel           the steps over every device, fed three ways
    python -m kdjax.tools.benchmark --study [--config.x=..]   one epoch of every phase of a study: kdjax.study.experiment
                                                        against parity/reference.py's seed loops (channels_last, in
                                                        child processes: glibc plain and tuned, the faster)

Shapes: --batch_size (128), --image_size (64), --num_classes (200); Adam (config.optimizer's defaults).

kdjax's steps are the study's own, built by its Setup on a random data set and jitted where the study jits them
(steps.py): the speed.* switches on; "before" is the same step with all of them off. PyTorch is parity/reference.py's
nets and loops (the seed as written), on kdjax's exact inputs, eager, NCHW or channels_last, in a child process per
allocator (torch_peer.py). Every ratio is taken against the faster of PyTorch's thread counts, 1 and one per core
(compare_torch.py). After a warm-up, `repeats` rounds each time `steps` consecutive steps of every variant in turn;
a figure is the median over rounds (timing.py).

One module per mode: plain.py, compare_torch.py, profile.py, data_parallel.py, study.py; the command line in
__main__.py.
"""
