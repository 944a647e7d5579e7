"""Training RAFT on generated scenes."""
