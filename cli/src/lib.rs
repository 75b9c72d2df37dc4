//! Shared glue for the gilmsg binaries.
