"""The network: RAFT's configuration, its parts (encoders, correlation, update block, upsampling) and
the RAFT module composed of them, plus warm start. Imports only torch and numpy."""
