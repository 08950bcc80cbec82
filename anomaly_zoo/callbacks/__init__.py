"""Callbacks for long and interrupted runs: resumable checkpoints, random state, signal handling."""

from anomaly_zoo.callbacks.random_state import RandomStateCheckpoint
from anomaly_zoo.callbacks.resumable_checkpoint import ResumableCheckpoint
from anomaly_zoo.callbacks.resume import NothingToResumeError, find_last_checkpoint, resume_command
from anomaly_zoo.callbacks.save_on_signal import SaveOnSignal, TrainingInterrupted

__all__ = ["NothingToResumeError", "RandomStateCheckpoint", "ResumableCheckpoint", "SaveOnSignal",
           "TrainingInterrupted", "find_last_checkpoint", "resume_command"]
