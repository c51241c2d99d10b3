//! Sizes and durations on the command line.
