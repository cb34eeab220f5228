"""Training on the NumPy engine: data, optimisers, schedules, augmentation and the resumable loop."""
