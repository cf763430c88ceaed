//! Errors and exit codes.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (refused as unsafe, rejected by the cluster, no leader, timeout, an unhealthy `status`) |
//! | 2 | usage error (unknown command or flag, malformed argument) |
//! | 3 | cluster unreachable: no endpoint answered |

use std::fmt;

/// Why pgwctl stops with a non-zero exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The operation failed (exit code 1).
    Failed,
    /// The command line is wrong (exit code 2).
    Usage,
    /// No endpoint could be reached (exit code 3).
    Unreachable,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
        }
    }
}

/// An error with its exit code and a message that names the node and what to do next.
#[derive(Debug)]
pub struct CtlError {
    /// The exit code class.
    pub exit: Exit,
    /// What went wrong and what to do.
    pub message: String,
}

impl CtlError {
    /// The operation failed.
    pub fn failed(message: impl Into<String>) -> Self {
        CtlError {
            exit: Exit::Failed,
            message: message.into(),
        }
    }

    /// The command line is wrong.
    pub fn usage(message: impl Into<String>) -> Self {
        CtlError {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// No endpoint answered.
    pub fn unreachable(message: impl Into<String>) -> Self {
        CtlError {
            exit: Exit::Unreachable,
            message: message.into(),
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

/// pgwctl's result type.
pub type Result<T> = std::result::Result<T, CtlError>;
