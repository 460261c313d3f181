//! One place where DPDK's negative return codes, `rte_errno` and null pointers become typed
//! errors (capsule's `core/src/ffi.rs` habit).

use std::ffi::CStr;
use std::ptr::NonNull;

use crate::sys;

/// An error from DPDK or from this crate's checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpdkError {
    /// A DPDK call failed with an errno.
    #[error("{what} failed: {msg} (errno {errno})")]
    Call {
        /// What was being done.
        what: &'static str,
        /// The positive errno.
        errno: i32,
        /// `rte_strerror(errno)`.
        msg: String,
    },
    /// EAL was already initialised in this process (it can be only once).
    #[error("the DPDK EAL is already initialised in this process")]
    AlreadyInitialised,
    /// An argument this crate refuses before calling DPDK.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub(crate) fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}

/// Maps a DPDK return code (negative errno on failure) to a result.
pub(crate) fn check(rc: i32, what: &'static str) -> Result<i32, DpdkError> {
    if rc < 0 {
        Err(DpdkError::Call {
            what,
            errno: -rc,
            msg: strerror(-rc),
        })
    } else {
        Ok(rc)
    }
}

/// Maps a returned pointer (null on failure, reason in `rte_errno`) to a result.
pub(crate) fn non_null<T>(p: *mut T, what: &'static str) -> Result<NonNull<T>, DpdkError> {
    NonNull::new(p).ok_or_else(|| {
        // SAFETY: reads the calling thread's rte_errno.
        let errno = unsafe { sys::sg_errno() };
        DpdkError::Call {
            what,
            errno,
            msg: strerror(errno),
        }
    })
}

/// The calling thread's `rte_errno` as an error.
pub(crate) fn errno_error(what: &'static str) -> DpdkError {
    // SAFETY: reads the calling thread's rte_errno.
    let errno = unsafe { sys::sg_errno() };
    DpdkError::Call {
        what,
        errno,
        msg: strerror(errno),
    }
}
